"""Multilayer perceptrons on a flat parameter vector: forward pass, backpropagation, exact
Hessian-vector products (Pearlmutter's R-operator), Gauss–Newton products, per-sample gradients
and a chunk of gradient-descent steps.

Network (``sizes = (d_0, d_1, ..., d_L)``, activation σ chosen by integer ``code``)::

    a_0 = x,   z_l = W_l a_{l-1} + b_l,   a_l = σ(z_l) (l < L),   f = a_L = z_L (linear output)

``theta`` holds, layer by layer, W_l (row-major, shape (d_l, d_{l-1})) then b_l. Losses
(``loss_code``), averaged over the n points of a batch:

- ``MSE`` (0):  L = (1/n) Σ_i ½ ||f(x_i) − y_i||²
- ``XENT`` (1): L = (1/n) Σ_i [(Σ_k y_ik) logsumexp(f(x_i)) − Σ_k y_ik f_k(x_i)], the softmax
  cross-entropy −Σ_k y_ik log softmax(f(x_i))_k for target rows y_i (one-hot or probabilities).

Backpropagation: δ_L = ∂L/∂f, δ_l = σ'(z_l) ⊙ W_{l+1}ᵀ δ_{l+1}, ∇W_l = Σ_i δ_l a_{l-1}ᵀ,
∇b_l = Σ_i δ_l. The R-operator R{·} = d/dr (·)(θ + r v)|_{r=0} applied to the forward and
backward passes gives H v exactly (Pearlmutter 1994):

    R{z_l} = V_l a_{l-1} + W_l R{a_{l-1}} + v_{b_l},   R{a_l} = σ'(z_l) R{z_l},   R{a_0} = 0
    R{δ_L} = H_f R{f}      (H_f = I/n for MSE, (Σy)(diag p − p pᵀ)/n for cross-entropy)
    R{δ_l} = σ''(z_l) R{z_l} ⊙ g_l + σ'(z_l) ⊙ (V_{l+1}ᵀ δ_{l+1} + W_{l+1}ᵀ R{δ_{l+1}})
    (H v)_{W_l} = Σ_i R{δ_l} a_{l-1}ᵀ + δ_l R{a_{l-1}}ᵀ,   (H v)_{b_l} = Σ_i R{δ_l}

with g_l = W_{l+1}ᵀ δ_{l+1}. The Gauss–Newton product G v = Jᵀ H_f J v is the R-forward pass
followed by a plain backward pass of H_f R{f}.

Parallel layout: the n points are cut into blocks of ``BLOCK`` consecutive points (the cut
depends on n only); blocks run in parallel, each with its own scratch and its own row of
partial sums, and the partial sums are added in block order. Results are therefore the same
for any number of threads. Inside a block each layer's activations are a contiguous (m, d_l)
matrix, so the layer products are small matrix products (``np.dot``, BLAS); the nonlinear and
loss parts are explicit loops. tanh is ``activations.tanh_fast`` (no library call, a few ulps);
the kernels use numpy's error model, without which its division checks for zero and the loops
over a layer's units do not vectorise (5x slower). ``mlp_gd_advance`` on one thread runs the
same blocks in order on the calling thread, in scratch allocated once per call.
"""

import math

import numpy as np
from numba import njit, prange

from .activations import TANH, act, d2act, dact, tanh_fast
from .control import FASTMATH, NONFINITE, OK

MSE, XENT = 0, 1
BLOCK = 64

# FASTMATH (kernels.control) lets LLVM vectorise the dot products; NaN/inf semantics are kept.


@njit(cache=True)
def mlp_layout(sizes):
    """Offsets of each layer's weights in θ and of each layer's units in the scratch buffers.

    Returns ``(woff, uoff, P, U)``: W_l starts at ``woff[l]`` and b_l at
    ``woff[l] + d_{l+1} d_l``; layer l's units come after ``uoff[l]`` units of the layers
    before it (a block of m points keeps layer l at ``buf[m·uoff[l] : m·(uoff[l] + d_l)]``);
    P is the number of parameters, U the total number of units (input included).
    """
    L = sizes.shape[0] - 1
    woff = np.empty(L, np.int64)
    uoff = np.empty(L + 1, np.int64)
    p = 0
    for l in range(L):
        woff[l] = p
        p += sizes[l + 1] * sizes[l] + sizes[l + 1]
    u = 0
    for l in range(L + 1):
        uoff[l] = u
        u += sizes[l]
    return woff, uoff, p, u


@njit(cache=True, inline="always")
def _act3(code, x):
    """(σ(x), σ'(x), σ''(x)); tanh is evaluated once for all three."""
    if code == TANH:
        t = tanh_fast(x)
        s = 1.0 - t * t
        return t, s, -2.0 * t * s
    return act(code, x), dact(code, x), d2act(code, x)


@njit(cache=True, inline="always")
def _lay(buf, m, sizes, uoff, l):
    """Layer l of a block of m points: a C-contiguous (m, d_l) view into ``buf``."""
    return buf[m * uoff[l] : m * (uoff[l] + sizes[l])].reshape(m, sizes[l])


@njit(cache=True, inline="always")
def _wmat(theta, sizes, woff, l):
    """W_l as a (d_{l+1}, d_l) view into θ (layer index l from 0)."""
    nin = sizes[l]
    nout = sizes[l + 1]
    return theta[woff[l] : woff[l] + nout * nin].reshape(nout, nin)


@njit(cache=True, inline="always")
def _bvec(theta, sizes, woff, l):
    nin = sizes[l]
    nout = sizes[l + 1]
    b0 = woff[l] + nout * nin
    return theta[b0 : b0 + nout]


@njit(cache=True, inline="always")
def _col_sums(M, out):
    """out[o] = Σ_i M[i, o], rows added in order (the bias part of a backward pass)."""
    for o in range(M.shape[1]):
        out[o] = 0.0
    for i in range(M.shape[0]):
        for o in range(M.shape[1]):
            out[o] += M[i, o]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _forward_block(sizes, code, theta, X, idx, i0, m, woff, uoff, A, S1, S2):
    """Forward pass of the points idx[i0:i0+m] (rows i0:i0+m if idx is empty).

    A holds every layer's activations (input and linear output included), S1 = σ'(z) and
    S2 = σ''(z) on hidden layers; all three are flat buffers of m·U values (see ``_lay``).
    """
    L = sizes.shape[0] - 1
    d0 = sizes[0]
    use_idx = idx.shape[0] > 0
    A0 = _lay(A, m, sizes, uoff, 0)
    for i in range(m):
        r = idx[i0 + i] if use_idx else i0 + i
        for j in range(d0):
            A0[i, j] = X[r, j]
    for l in range(L):
        Ap = _lay(A, m, sizes, uoff, l)
        Z = _lay(A, m, sizes, uoff, l + 1)
        b = _bvec(theta, sizes, woff, l)
        np.dot(Ap, _wmat(theta, sizes, woff, l).T, Z)
        nout = sizes[l + 1]
        if l == L - 1:
            for i in range(m):
                for o in range(nout):
                    Z[i, o] += b[o]
        else:
            T1 = _lay(S1, m, sizes, uoff, l + 1)
            T2 = _lay(S2, m, sizes, uoff, l + 1)
            for i in range(m):
                for o in range(nout):
                    a, s1, s2 = _act3(code, Z[i, o] + b[o])
                    Z[i, o] = a
                    T1[i, o] = s1
                    T2[i, o] = s2


@njit(cache=True, inline="always")
def _softmax_norm(F, i):
    """(max_k F[i, k], Σ_k exp(F[i, k] − max)): the stable pieces of softmax and logsumexp."""
    mx = F[i, 0]
    for k in range(1, F.shape[1]):
        mx = max(mx, F[i, k])
    se = 0.0
    for k in range(F.shape[1]):
        se += math.exp(F[i, k] - mx)
    return mx, se


@njit(cache=True)
def _output_rows(loss_code, F, Y, idx, i0, m, inv_n, D):
    """Loss of the block (times inv_n, returned) and δ_L = ∂L/∂f into D (m, d_L)."""
    use_idx = idx.shape[0] > 0
    dout = F.shape[1]
    total = 0.0
    for i in range(m):
        r = idx[i0 + i] if use_idx else i0 + i
        if loss_code == MSE:
            for k in range(dout):
                e = F[i, k] - Y[r, k]
                total += 0.5 * e * e * inv_n
                D[i, k] = e * inv_n
        else:
            mx, se = _softmax_norm(F, i)
            lse = mx + math.log(se)
            ysum = 0.0
            yf = 0.0
            for k in range(dout):
                ysum += Y[r, k]
                yf += Y[r, k] * F[i, k]
            total += (ysum * lse - yf) * inv_n
            for k in range(dout):
                p = math.exp(F[i, k] - lse)
                D[i, k] = (ysum * p - Y[r, k]) * inv_n
    return total


@njit(cache=True)
def _loss_hessian_rows(loss_code, F, RF, Y, idx, i0, m, inv_n, RD):
    """RD = H_f R{f} per row (H_f the Hessian of the loss in the outputs f)."""
    use_idx = idx.shape[0] > 0
    dout = F.shape[1]
    for i in range(m):
        if loss_code == MSE:
            for k in range(dout):
                RD[i, k] = RF[i, k] * inv_n
        else:
            r = idx[i0 + i] if use_idx else i0 + i
            mx, se = _softmax_norm(F, i)
            ysum = 0.0
            q = 0.0
            for k in range(dout):
                ysum += Y[r, k]
                q += math.exp(F[i, k] - mx) / se * RF[i, k]
            for k in range(dout):
                p = math.exp(F[i, k] - mx) / se
                RD[i, k] = ysum * p * (RF[i, k] - q) * inv_n


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_block(sizes, theta, woff, uoff, m, A, S1, D, g):
    """Backpropagate δ_L (in D's output layer) through the block; g (P,) receives Σ_rows ∇θ.

    Every entry of g is overwritten (not accumulated). D's hidden layers are overwritten.
    """
    L = sizes.shape[0] - 1
    for l in range(L - 1, -1, -1):
        Dl = _lay(D, m, sizes, uoff, l + 1)
        Ap = _lay(A, m, sizes, uoff, l)
        np.dot(Dl.T, Ap, _wmat(g, sizes, woff, l))
        _col_sums(Dl, _bvec(g, sizes, woff, l))
        if l > 0:
            Dp = _lay(D, m, sizes, uoff, l)
            np.dot(Dl, _wmat(theta, sizes, woff, l), Dp)
            Sp = _lay(S1, m, sizes, uoff, l)
            for i in range(m):
                for j in range(sizes[l]):
                    Dp[i, j] *= Sp[i, j]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _rforward_block(sizes, theta, v, woff, uoff, m, A, S1, RZ, RA, T):
    """R-forward pass: R{z_l} into RZ and R{a_l} into RA (flat block buffers; T scratch)."""
    L = sizes.shape[0] - 1
    for l in range(L):
        nout = sizes[l + 1]
        Ap = _lay(A, m, sizes, uoff, l)
        Rz = _lay(RZ, m, sizes, uoff, l + 1)
        Ra = _lay(RA, m, sizes, uoff, l + 1)
        c = _bvec(v, sizes, woff, l)
        np.dot(Ap, _wmat(v, sizes, woff, l).T, Rz)
        if l > 0:
            Tl = T[: m * nout].reshape(m, nout)
            np.dot(_lay(RA, m, sizes, uoff, l), _wmat(theta, sizes, woff, l).T, Tl)
            for i in range(m):
                for o in range(nout):
                    Rz[i, o] += Tl[i, o]
        if l == L - 1:
            for i in range(m):
                for o in range(nout):
                    Rz[i, o] += c[o]
                    Ra[i, o] = Rz[i, o]
        else:
            S = _lay(S1, m, sizes, uoff, l + 1)
            for i in range(m):
                for o in range(nout):
                    Rz[i, o] += c[o]
                    Ra[i, o] = S[i, o] * Rz[i, o]


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _rbackward_block(sizes, theta, v, woff, uoff, m, A, S1, S2, D, RZ, RA, RD, T, h):
    """R-backward pass given δ_L in D and R{δ_L} in RD (output layer); h (P,) receives
    Σ_rows H v (every entry overwritten). D and RD hidden layers are overwritten; T scratch."""
    L = sizes.shape[0] - 1
    for l in range(L - 1, -1, -1):
        nin = sizes[l]
        nout = sizes[l + 1]
        Dl = _lay(D, m, sizes, uoff, l + 1)
        RDl = _lay(RD, m, sizes, uoff, l + 1)
        Ap = _lay(A, m, sizes, uoff, l)
        hW = _wmat(h, sizes, woff, l)
        np.dot(RDl.T, Ap, hW)
        if l > 0:
            Tw = T[: nout * nin].reshape(nout, nin)
            np.dot(Dl.T, _lay(RA, m, sizes, uoff, l), Tw)
            for o in range(nout):
                for j in range(nin):
                    hW[o, j] += Tw[o, j]
        _col_sums(RDl, _bvec(h, sizes, woff, l))
        if l > 0:
            W = _wmat(theta, sizes, woff, l)
            Dp = _lay(D, m, sizes, uoff, l)
            RDp = _lay(RD, m, sizes, uoff, l)
            Tg = T[: m * nin].reshape(m, nin)
            np.dot(Dl, W, Dp)  # g = Wᵀ δ
            np.dot(Dl, _wmat(v, sizes, woff, l), RDp)  # Vᵀ δ
            np.dot(RDl, W, Tg)  # Wᵀ R{δ}
            S = _lay(S1, m, sizes, uoff, l)
            SS = _lay(S2, m, sizes, uoff, l)
            Rz = _lay(RZ, m, sizes, uoff, l)
            for i in range(m):
                for j in range(nin):
                    gj = Dp[i, j]
                    RDp[i, j] = SS[i, j] * Rz[i, j] * gj + S[i, j] * (RDp[i, j] + Tg[i, j])
                    Dp[i, j] = S[i, j] * gj


@njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _backward_row(sizes, theta, woff, uoff, m, i, A, S1, D, g):
    """Backpropagate δ_L of the single row i of a block; g (P,) receives ∇θ of that row
    (every entry overwritten). D's hidden layers (row i) are overwritten."""
    L = sizes.shape[0] - 1
    for l in range(L - 1, -1, -1):
        nin = sizes[l]
        nout = sizes[l + 1]
        Dl = _lay(D, m, sizes, uoff, l + 1)
        Ap = _lay(A, m, sizes, uoff, l)
        gW = _wmat(g, sizes, woff, l)
        gb = _bvec(g, sizes, woff, l)
        for o in range(nout):
            d = Dl[i, o]
            gb[o] = d
            for j in range(nin):
                gW[o, j] = d * Ap[i, j]
        if l > 0:
            W = _wmat(theta, sizes, woff, l)
            Dp = _lay(D, m, sizes, uoff, l)
            Sp = _lay(S1, m, sizes, uoff, l)
            for j in range(nin):
                Dp[i, j] = 0.0
            for o in range(nout):
                d = Dl[i, o]
                for j in range(nin):
                    Dp[i, j] += d * W[o, j]
            for j in range(nin):
                Dp[i, j] *= Sp[i, j]


@njit(cache=True, parallel=True)
def _sum_rows(part, out):
    """out[p] = Σ_b part[b, p] in block order (parallel over p, deterministic)."""
    nb = part.shape[0]
    for p in prange(part.shape[1]):
        s = 0.0
        for b in range(nb):
            s += part[b, p]
        out[p] = s


@njit(cache=True, inline="always")
def _n_blocks(n):
    return (n + BLOCK - 1) // BLOCK


@njit(cache=True, inline="always")
def _block_forward(sizes, code, theta, X, idx, b, n, woff, uoff, U):
    """Block b of n points: ``(i0, m, A, S1, S2)``, its first row, its size and its own freshly
    allocated forward-pass buffers (see ``_forward_block``)."""
    i0 = b * BLOCK
    m = min(BLOCK, n - i0)
    A = np.empty(m * U)
    S1 = np.empty(m * U)
    S2 = np.empty(m * U)
    _forward_block(sizes, code, theta, X, idx, i0, m, woff, uoff, A, S1, S2)
    return i0, m, A, S1, S2


@njit(cache=True, parallel=True)
def mlp_forward(sizes, code, theta, X, out):
    """Network outputs f(x_i; θ) of every row of X into ``out`` (n, d_L)."""
    n = X.shape[0]
    woff, uoff, P, U = mlp_layout(sizes)
    L = sizes.shape[0] - 1
    idx = np.empty(0, np.int64)
    for b in prange(_n_blocks(n)):
        i0, m, A, S1, S2 = _block_forward(sizes, code, theta, X, idx, b, n, woff, uoff, U)
        out[i0 : i0 + m] = _lay(A, m, sizes, uoff, L)
    return OK


@njit(cache=True)
def _add_into(acc, x):
    """acc += x, entry by entry (no reassociation: the block sums keep their order)."""
    for p in range(acc.shape[0]):
        acc[p] += x[p]


@njit(cache=True)
def _loss_grad_serial(sizes, code, loss_code, theta, X, Y, idx, want_grad, grad, work):
    """``mlp_loss_grad`` on the calling thread, in the scratch ``work`` (``_work_size``): the
    same blocks, the same arithmetic and the same block-order sums, so the same bits, without
    a parallel region or an allocation."""
    nsel = idx.shape[0] if idx.shape[0] > 0 else X.shape[0]
    woff, uoff, P, U = mlp_layout(sizes)
    L = sizes.shape[0] - 1
    inv_n = 1.0 / nsel
    A, S1, S2, D, gb = _split_work(work, U, P)
    loss = 0.0
    if want_grad:
        grad[:] = 0.0
    for b in range(_n_blocks(nsel)):
        i0 = b * BLOCK
        m = min(BLOCK, nsel - i0)
        _forward_block(sizes, code, theta, X, idx, i0, m, woff, uoff, A, S1, S2)
        F = _lay(A, m, sizes, uoff, L)
        loss += _output_rows(loss_code, F, Y, idx, i0, m, inv_n, _lay(D, m, sizes, uoff, L))
        if want_grad:
            _backward_block(sizes, theta, woff, uoff, m, A, S1, D, gb)
            _add_into(grad, gb)
    return loss


@njit(cache=True, inline="always")
def _work_size(sizes):
    """Length of the serial scratch: four block buffers of BLOCK·U values and one (P,) row."""
    woff, uoff, P, U = mlp_layout(sizes)
    return 4 * BLOCK * U + P


@njit(cache=True, inline="always")
def _split_work(work, U, P):
    n = BLOCK * U
    return (
        work[:n],
        work[n : 2 * n],
        work[2 * n : 3 * n],
        work[3 * n : 4 * n],
        work[4 * n : 4 * n + P],
    )


@njit(cache=True, parallel=True)
def mlp_loss_grad(sizes, code, loss_code, theta, X, Y, idx, want_grad, grad):
    """Loss L(θ) (returned) and, if ``want_grad``, ∇L into ``grad`` (P,).

    The batch is the rows ``idx`` of X, Y (all rows when ``idx`` is empty).
    """
    nsel = idx.shape[0] if idx.shape[0] > 0 else X.shape[0]
    woff, uoff, P, U = mlp_layout(sizes)
    L = sizes.shape[0] - 1
    nb = _n_blocks(nsel)
    inv_n = 1.0 / nsel
    lpart = np.zeros(nb)
    part = np.empty((nb if want_grad else 0, P))
    for b in prange(nb):
        i0, m, A, S1, S2 = _block_forward(sizes, code, theta, X, idx, b, nsel, woff, uoff, U)
        D = np.empty(m * U)
        F = _lay(A, m, sizes, uoff, L)
        lpart[b] = _output_rows(loss_code, F, Y, idx, i0, m, inv_n, _lay(D, m, sizes, uoff, L))
        if want_grad:
            _backward_block(sizes, theta, woff, uoff, m, A, S1, D, part[b])
    loss = 0.0
    for b in range(nb):
        loss += lpart[b]
    if want_grad:
        _sum_rows(part, grad)
    return loss


@njit(cache=True, parallel=True)
def _curvature_vp(sizes, code, loss_code, theta, X, Y, v, gauss_newton, out):
    """H v (exact, R-forward then R-backward pass) or, with ``gauss_newton``, G v (R-forward
    pass, then a plain backward pass of H_f R{f}) into ``out`` (P,)."""
    n = X.shape[0]
    woff, uoff, P, U = mlp_layout(sizes)
    L = sizes.shape[0] - 1
    nb = _n_blocks(n)
    inv_n = 1.0 / n
    idx = np.empty(0, np.int64)
    part = np.empty((nb, P))
    wmax = 0
    for l in range(L):
        wmax = max(wmax, sizes[l + 1] * sizes[l], BLOCK * sizes[l], BLOCK * sizes[l + 1])
    for b in prange(nb):
        i0, m, A, S1, S2 = _block_forward(sizes, code, theta, X, idx, b, n, woff, uoff, U)
        RZ = np.empty(m * U)
        RA = np.empty(m * U)
        RD = np.empty(m * U)
        T = np.empty(wmax)
        F = _lay(A, m, sizes, uoff, L)
        _rforward_block(sizes, theta, v, woff, uoff, m, A, S1, RZ, RA, T)
        RF = _lay(RA, m, sizes, uoff, L)
        _loss_hessian_rows(loss_code, F, RF, Y, idx, i0, m, inv_n, _lay(RD, m, sizes, uoff, L))
        if gauss_newton:
            _backward_block(sizes, theta, woff, uoff, m, A, S1, RD, part[b])
        else:
            D = np.empty(m * U)
            _output_rows(loss_code, F, Y, idx, i0, m, inv_n, _lay(D, m, sizes, uoff, L))
            _rbackward_block(sizes, theta, v, woff, uoff, m, A, S1, S2, D, RZ, RA, RD, T, part[b])
    _sum_rows(part, out)
    return OK


@njit(cache=True)
def mlp_hvp(sizes, code, loss_code, theta, X, Y, v, out):
    """Exact Hessian-vector product H(θ) v of the loss (R-operator) into ``out`` (P,)."""
    return _curvature_vp(sizes, code, loss_code, theta, X, Y, v, False, out)


@njit(cache=True)
def mlp_gnvp(sizes, code, loss_code, theta, X, Y, v, out):
    """Gauss–Newton product G v = Σ_i J_iᵀ H_f J_i v (J_i = ∂f(x_i)/∂θ) into ``out`` (P,)."""
    return _curvature_vp(sizes, code, loss_code, theta, X, Y, v, True, out)


@njit(cache=True, parallel=True)
def mlp_per_sample_grads(sizes, code, theta, X, out):
    """Rows ∇θ f_k(x_i; θ) into ``out`` (n·d_L, P), row i·d_L + k."""
    n = X.shape[0]
    woff, uoff, P, U = mlp_layout(sizes)
    L = sizes.shape[0] - 1
    dout = sizes[L]
    idx = np.empty(0, np.int64)
    for b in prange(_n_blocks(n)):
        i0, m, A, S1, S2 = _block_forward(sizes, code, theta, X, idx, b, n, woff, uoff, U)
        D = np.empty(m * U)
        DL = _lay(D, m, sizes, uoff, L)
        for i in range(m):
            for k in range(dout):
                DL[i, :] = 0.0
                DL[i, k] = 1.0
                _backward_row(sizes, theta, woff, uoff, m, i, A, S1, D, out[(i0 + i) * dout + k])
    return OK


@njit(cache=True)
def mlp_gd_advance(sizes, code, loss_code, theta, X, Y, lr, batches, loss_out, gnorm_out, serial):
    """Advance θ ← θ − lr ∇L_B(θ) in place for ``loss_out.shape[0]`` steps.

    With ``serial`` (the caller runs on one thread) each step runs on the calling thread in
    scratch allocated once, without a parallel region; the bits are the same either way.

    ``batches`` (steps, B) holds the row indices of each step's mini-batch; with B = 0 every
    step uses all points (full-batch gradient descent). Step k records the batch loss and
    ||∇L_B|| at θ_k (before the update) in ``loss_out[k]``, ``gnorm_out[k]``.
    Returns ``(n_done, status)``; status NONFINITE stops at the first step whose loss or
    gradient is not finite, leaving θ at that step.
    """
    steps = loss_out.shape[0]
    P = theta.shape[0]
    g = np.empty(P)
    work = np.empty(_work_size(sizes) if serial else 0)
    for k in range(steps):
        if serial:  # no parallel region and no allocation per step
            loss = _loss_grad_serial(sizes, code, loss_code, theta, X, Y, batches[k], True, g, work)
        else:
            loss = mlp_loss_grad(sizes, code, loss_code, theta, X, Y, batches[k], True, g)
        s = 0.0
        for p in range(P):
            s += g[p] * g[p]
        loss_out[k] = loss
        gnorm_out[k] = math.sqrt(s)
        if not (math.isfinite(loss) and math.isfinite(s)):
            return k, NONFINITE
        for p in range(P):
            theta[p] -= lr * g[p]
    return steps, OK
