"""The modification and recovery modules of interactive dose shaping (paper 004, Algorithm 1, section 2.3).

:class:`DoseShaping` is mixed into :class:`~rtlab.methods.ids.IDSSession`: it works on the
session's engine (:class:`rtlab.dose.FluenceDose`) through the session's ``_eval`` (a voxel's dose
from the node grids), ``_effect`` (a candidate patch's dose change) and ``_apply`` (a patch
update), and on its TPI maps (eq 1). The rules (eqs 2-3, the scale, clipping, the close-in
order) are described in :mod:`rtlab.methods.ids.session`.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .events import IDSEvent
from .patches import in_reach

__all__ = ["DoseShaping"]


class DoseShaping:
    """Patches that impose a dose (Algorithm 1, eqs 2-3) and the recovery loop (section 2.3)."""

    # -- patches (eqs 2-3, Algorithm 1) ------------------------------------------------
    def _cells(self, p, b):
        """Control point (row, col) of body position p in beam b, or None."""
        pu, pv = self._PU[p, b], self._PV[p, b]
        if not in_reach(pu):
            return None
        r, c = int(np.rint(pv)) // self.sub, int(np.rint(pu)) // self.sub
        R, Cc = self.tpi_t[b].shape
        if 0 <= r < R and 0 <= c < Cc:
            return r, c
        return None

    def unit_patch(self, p: int, lower: bool) -> dict:
        """Normalised patch ``A`` of every beam for body position ``p`` (paper 004 eqs 2-3, Algorithm 1 l. 3-10).

        Returns ``{beam: (row0, col0, A)}`` with ``A = K exp(-mu TPI)`` on the bounding box.
        """
        tpi = self.tpi_t if lower else self.tpi_o
        f = self.fluence_mm
        vals = []
        for b in range(self.n_beams):
            cell = self._cells(p, b)
            if cell is not None:
                vals.append(tpi[b][cell])
        mean = float(np.mean(vals)) if vals else 0.0
        mu = math.log(2.0) / mean if mean > 0 else 0.0  # eq 3
        R = int(math.ceil(self.patch_sigmas * self.kernel_sigma_mm / f))
        out = {}
        for b in range(self.n_beams):
            pu, pv = float(self._PU[p, b]), float(self._PV[p, b])
            if not in_reach(pu):
                continue
            Rm, Cm = self.map_shape[b]
            r0, r1 = max(0, int(math.floor(pv)) - R), min(Rm, int(math.ceil(pv)) + R + 1)
            c0, c1 = max(0, int(math.floor(pu)) - R), min(Cm, int(math.ceil(pu)) + R + 1)
            if r1 <= r0 or c1 <= c0:
                continue
            rr = np.arange(r0, r1)[:, None]
            cc = np.arange(c0, c1)[None, :]
            rad2 = ((rr - pv) ** 2 + (cc - pu) ** 2) * f * f
            K = np.exp(-rad2 / (2 * self.kernel_sigma_mm**2))
            K[rad2 > (self.patch_sigmas * self.kernel_sigma_mm) ** 2] = 0.0
            t = tpi[b][np.minimum(rr // self.sub, tpi[b].shape[0] - 1), np.minimum(cc // self.sub, tpi[b].shape[1] - 1)]
            A = K * np.exp(-mu * t)  # eq 2
            if A.max() > 0:
                out[b] = (r0, c0, A)
        return out

    def _clip(self, patches, factor):
        """Scaled patches clipped so that fluence stays >= 0; returns (patches, clipped?)."""
        res, clipped = {}, False
        for b, (r0, c0, A) in patches.items():
            cur = self.fluence[b][r0 : r0 + A.shape[0], c0 : c0 + A.shape[1]]
            d = factor * A
            dd = np.maximum(cur + d, 0.0) - cur
            if np.any(np.abs(dd - d) > 1e-12):
                clipped = True
            res[b] = (r0, c0, dd)
        return res, clipped

    def _modify_voxel(self, p: int, goal: float) -> float:
        """Algorithm 1 (CreatePatch) at body position p towards ``goal`` Gy, applied; returns the new dose."""
        d0 = float(self._eval([p])[0])
        if abs(goal - d0) < 1e-12:
            return d0
        A = self.unit_patch(p, lower=goal < d0)
        if not A:
            return d0
        for it in range(max(1, self.max_clip_iter)):
            delta = float(self._effect(A, [p])[0])  # d1 - d0, Algorithm 1 l. 11
            if delta <= 0:
                return d0
            if self.scale == "paper" and it == 0:
                fac = abs(goal - d0) / max(abs(goal - (d0 + delta)), 1e-12) * np.sign(goal - d0)
            else:
                fac = (goal - d0) / delta
            P, clipped = self._clip(A, fac)
            if not clipped:
                self._apply(A, fac)
            else:
                self._apply(P)
            d0 = float(self._eval([p])[0])
            if not clipped or abs(goal - d0) <= 1e-9 * self.reference_gy or self.scale == "paper":
                break
            # re-solve the remainder with the amplitudes that can still move
            A = {b: (r0, c0, a * ((self.fluence[b][r0 : r0 + a.shape[0], c0 : c0 + a.shape[1]] > 1e-12)
                                  if goal < d0 else 1.0)) for b, (r0, c0, a) in A.items()}
            A = {b: v for b, v in A.items() if v[2].max() > 0}
            if not A:
                break
        return d0

    def _modify_group(self, pos, goals):
        """Group request: anchor voxels, one damped linear solve for all anchor scales, one patch."""
        pos = np.asarray(pos, np.int64)
        goals = np.asarray(goals, float)
        if pos.size == 1:
            self._modify_voxel(int(pos[0]), float(goals[0]))
            return
        w = self.grid.index_to_world(np.stack(np.unravel_index(self.vox[pos], self.grid.shape), axis=1))
        anchor_mm = max(self.kernel_sigma_mm / 2, 2 * max(self.grid.spacing))
        anchors = []
        for i in range(pos.size):  # greedy thinning
            if all(np.linalg.norm(w[i] - w[j]) >= anchor_mm for j in anchors):
                anchors.append(i)
            if len(anchors) >= 40:
                break
        for _ in range(2):
            d0 = self._eval(pos[anchors])
            r = goals[anchors] - d0
            units = [self.unit_patch(int(pos[a]), lower=ri < 0) for a, ri in zip(anchors, r)]
            Gm = np.zeros((len(anchors), len(anchors)))
            for j, A in enumerate(units):
                if A:
                    Gm[:, j] = self._effect(A, pos[anchors])
            lam = 1e-3 * np.trace(Gm) / len(anchors) + 1e-30
            fac = np.linalg.solve(Gm.T @ Gm + lam**2 * np.eye(len(anchors)), Gm.T @ r)
            comb = {}
            for j, A in enumerate(units):
                for b, (r0, c0, a) in A.items():
                    comb.setdefault(b, []).append((r0, c0, fac[j] * a))
            P, _ = self._clip(self._merge(comb), 1.0)
            self._apply(P)

    # -- recovery ---------------------------------------------------------------------------------
    def _residual(self):
        """Deviations of the tracked voxels from their goals (Gy) and the request voxels' (Gy)."""
        rq = self._req
        return self.d_trk - rq["before"], self._eval(rq["pos"]) - rq["goals"]

    def _footprint_scales(self, e, er, cols, cols_r, j_hold):
        """Least-squares scales of unit patches over the voxels they reach (see :meth:`_restore_footprint`).

        ``e`` (tracked) and ``er`` (request voxels) are the deviations (Gy); ``cols`` / ``cols_r`` the
        patches' dose effects on them (one column per patch, Gy per unit scale). With two patches the
        second holds request voxel ``j_hold`` exactly at its goal; organ-at-risk voxels count only
        where they end hotter than before (one-sided), with the active set re-estimated 3 times.
        """
        a = cols[0]
        touched = np.abs(a) > 0
        for c in cols[1:]:
            touched |= np.abs(c) > 0
        idx = np.flatnonzero(touched)
        e_t = e[idx]
        A = np.stack([c[idx] for c in cols], axis=1)
        is_t = self._trk_is_t[idx]
        Ar = np.stack(cols_r, axis=1)
        free_r = np.ones(er.size, bool)
        if len(cols) == 2:  # eliminate the hold: x1 = -(er_j + x0 a_rj) / b_rj
            free_r[j_hold] = False
            arj, brj = Ar[j_hold, 0], Ar[j_hold, 1]
            g = A[:, 0] - A[:, 1] * arj / brj
            h = e_t - A[:, 1] * er[j_hold] / brj
            gr = Ar[free_r, 0] - Ar[free_r, 1] * arj / brj
            hr = er[free_r] - Ar[free_r, 1] * er[j_hold] / brj
        else:
            g, h, gr, hr = A[:, 0], e_t, Ar[:, 0], er
        wr = self.request_weight * max(1, idx.size) / max(1, er.size)
        active = is_t | (h > 0)
        x0 = 0.0
        for _ in range(3):
            num = float(g[active] @ h[active] + wr * (gr @ hr))
            den = float(g[active] @ g[active] + wr * (gr @ gr))
            x0 = -num / den if den > 0 else 0.0
            new = is_t | (h + x0 * g > 0)
            if np.array_equal(new, active):
                break
            active = new
        if len(cols) == 2:
            return x0, -(er[j_hold] + x0 * Ar[j_hold, 0]) / Ar[j_hold, 1]
        return (x0,)

    def _restore_footprint(self, p: int, goal: float) -> float:
        """One recovery step whose patch scale fits the voxels it reaches, holding the request.

        The patch is Algorithm 1's unit patch ``A`` for voxel ``p`` (eqs 2-3, the direction of
        ``goal - d(p)``); its scale is not the one that restores ``p`` exactly but the one that
        minimises the squared deviation from their goals of every tracked voxel the patch reaches
        (targets both ways, organs at risk only where hotter than before) and of the request
        voxels (weight :attr:`request_weight` x voxels reached / request voxels). A second unit
        patch on the request voxel the first one moves most (its direction opposing that move)
        is scaled so that this voxel stays at its requested dose (paper 004, section 2.3: "the
        recovery strategy will try to compensate the compromising fluence modification ... using
        more suitable beam directions"). With wide patches (the paper's ``w_2`` kernel) the exact
        single-voxel restoration overshoots the voxels around it; this scale cannot make the
        squared deviation (at a fixed organ-at-risk active set) larger. Returns the new dose of ``p``.
        """
        rq = self._req
        d0 = float(self._eval([p])[0])
        if abs(goal - d0) < 1e-12:
            return d0
        U = self.unit_patch(p, lower=goal < d0)
        if not U:
            return d0
        e, er = self._residual()
        a = self._measure(U)
        a_r = self._effect(U, rq["pos"])
        a_p = float(self._effect(U, [p])[0])
        if a_p <= 0:
            return d0
        patches, cols, cols_r, j = [U], [a], [a_r], None
        if self.hold_request and np.abs(a_r).max() > 0:
            j = int(np.argmax(np.abs(a_r)))
            x_exact = (goal - d0) / a_p
            need = -(er[j] + x_exact * a_r[j])  # change request voxel j needs after the exact step
            for lower in (need < 0, need >= 0):
                Um = self.unit_patch(int(rq["pos"][j]), lower=lower)
                b_r = self._effect(Um, rq["pos"]) if Um else np.zeros(a_r.size)
                if not Um or b_r[j] <= 0:
                    continue
                x = self._footprint_scales(e, er, [a, self._measure(Um)], [a_r, b_r], j)
                if (x[1] < 0) == lower:  # the hold moves in this patch's direction
                    patches, cols, cols_r = [U, Um], None, None
                    break
            else:
                j = None
        if j is None or len(patches) == 1:
            x = self._footprint_scales(e, er, [a], [a_r], None)
        if x[0] * (goal - d0) <= 0:  # the fit does not move p toward its goal: nothing to gain here
            return d0
        comb = {}
        for U_k, x_k in zip(patches, x):
            for b, (r0, c0, A) in U_k.items():
                comb.setdefault(b, []).append((r0, c0, x_k * A))
        P, _ = self._clip(self._merge(comb), 1.0)
        self._apply(P)
        return float(self._eval([p])[0])

    def _measure(self, patches) -> np.ndarray:
        """Dose change (Gy) of every tracked voxel by ``patches``: applied, read, taken back (exact: linear).

        Two patch updates (and syncs of the deferred far scatter, ``lazy_sigma_mm``), far cheaper
        than :meth:`_effect` on all tracked voxels.
        """
        self._sync()
        before = self.d_trk.copy()
        self._apply(patches)
        self._sync()
        a = self.d_trk - before
        self._apply(patches, -1.0)
        self._sync()
        return a

    @staticmethod
    def _merge(comb):
        """``{beam: [(row0, col0, delta), ...]}`` -> ``{beam: (row0, col0, summed delta)}`` on the union box."""
        patches = {}
        for b, lst in comb.items():
            R0 = min(x[0] for x in lst)
            C0 = min(x[1] for x in lst)
            R1 = max(x[0] + x[2].shape[0] for x in lst)
            C1 = max(x[1] + x[2].shape[1] for x in lst)
            acc = np.zeros((R1 - R0, C1 - C0))
            for r0, c0, a in lst:
                acc[r0 - R0 : r0 - R0 + a.shape[0], c0 - C0 : c0 - C0 + a.shape[1]] += a
            patches[b] = (R0, C0, acc)
        return patches

    def _disturbance(self):
        """(n_disturbed, sum |e| Gy, candidate mask over tracked, errors, request errors)."""
        rq = self._req
        if rq is None:
            return 0, 0.0, None, None, None
        e = self.d_trk - rq["before"]
        cand = np.where(self._trk_is_t, np.abs(e) > self.tol, e > self.tol) & ~rq["in_req"] & ~rq["skip"]
        dr = self._eval(rq["pos"])
        er = dr - rq["goals"]
        creq = np.abs(er) > self.request_tol
        n = int(cand.sum() + creq.sum())
        s = float(np.abs(e[cand]).sum() + np.abs(er[creq]).sum())
        return n, s, cand, e, (creq, er)

    def _select(self, cand, e, creq, er):
        """The next voxel to restore: (body position, goal Gy, tracked index or None for a request voxel)."""
        rq = self._req
        if cand.any():
            ci = np.flatnonzero(cand)
            ae = np.abs(e[ci])
            ci = ci[ae >= self.significance * ae.max()]
            dist = rq["dist"][ci]
            band = ci[dist >= dist.max() - self.band_mm]
            k = int(band[np.argmax(np.abs(e[band]))])
            return int(self._trk[k]), float(rq["before"][k]), k
        # only the request voxels themselves (distance 0) are left
        j = int(np.argmax(np.abs(er) * creq))
        return int(rq["pos"][j]), float(rq["goals"][j]), None

    def _recover(self, n):
        rq = self._req
        done = 0
        for step in range(1, n + 1):
            t0 = time.perf_counter()
            c0 = time.process_time()
            nd, _, cand, e, (creq, er) = self._disturbance()
            if nd == 0:
                break
            for _ in range(max(1, self.max_tries)):
                p, goal, k = self._select(cand, e, creq, er)
                if self.step_rule == "footprint" and k is not None:
                    d_before = float(self._eval([p])[0])
                    dnew = self._restore_footprint(p, goal)
                    # a voxel the fit cannot move toward its goal (by a tenth of the tolerance) is given
                    # up, and the next one is tried within the same step: a step is one applied patch
                    if abs(d_before - goal) - abs(dnew - goal) >= 0.1 * self.tol:
                        break
                    rq["skip"][k] = True
                    nd, _, cand, e, (creq, er) = self._disturbance()
                    if nd == 0 or not (cand.any() or creq.any()):
                        break
                    continue
                dnew = self._modify_voxel(p, goal)
                if k is not None and abs(dnew - goal) > self.tol:
                    rq["skip"][k] = True  # cannot be restored by a patch (e.g. out of every field)
                break
            self.timings["step_ms"].append((time.perf_counter() - t0) * 1e3)
            self.timings["step_cpu_ms"].append((time.process_time() - c0) * 1e3)
            done += 1
            nd, s = self._disturbance()[:2]
            self._emit(IDSEvent("recovery", step, n, self.index_of(p), goal, dnew, nd, s))
        self._sync()
        self._emit(IDSEvent("recovery_done", done, n, None, n_disturbed=self._disturbance()[0]))
        return done
