"""Loss terms of the dictionaries, as pure functions of tensors.

Scales follow the original code, because its published weights (λ = 1e-7) only make sense with them:

- reconstruction: mean of squared errors over tokens *and* dimensions, (1 / (n·d)) Σ ‖h − ĥ‖²;
- entropy: H = Σ_j H_b(p_j) in bits, a sum over codes (not a mean), p_j the code's firing rate in
  the minibatch;
- covariance: Σ_{i≠j} |Cov(h_i, h_j)| with the unbiased covariance (divisor n − 1), a sum over all
  ordered pairs;
- L1: Σ |a| over tokens and latents (or a per-token mean with `reduction="mean"`).

All terms are computed in float32 (or float64 when given float64).
"""

import warnings

import torch

ENTROPY_EPS = 1e-10  # inside the logs, as in the original code: keeps the gradient finite at p = 0 or 1


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def reconstruction_loss(target: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element, (1 / (n·d)) Σ ‖h − ĥ‖² (the original's `self_regression_loss`)."""
    return torch.mean((_float(target) - _float(reconstruction)) ** 2)


def binary_entropy_bits(p: torch.Tensor, eps: float = ENTROPY_EPS) -> torch.Tensor:
    """Element-wise entropy in bits of Bernoulli(p): −p log2(p + eps) − (1 − p) log2(1 − p + eps)."""
    return -(p * torch.log2(p + eps) + (1 - p) * torch.log2(1 - p + eps))


def minibatch_entropy(codes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Sum over codes of the binary entropy of each code's firing rate in the minibatch, in bits.

    Args:
        codes: `[n, m]` codes in {0, 1}; gradients flow into them (and through the estimator).
        threshold: while the entropy is below this many bits the term is 0 (the original's
            `entropy_threshold`; 0 keeps it always on).
    """
    p = _float(codes).mean(dim=0)
    entropy = binary_entropy_bits(p).sum()
    if threshold > 0 and entropy.item() < threshold:
        return entropy.new_zeros(())
    return entropy


class _AbsOffDiagonalCovariance(torch.autograd.Function):
    """Σ_{i≠j} |C_ij| with C = Xcᵀ Xc / (n − 1), computed and differentiated column chunk by column chunk.

    Autograd through `abs(torch.cov(x))` would keep the m×m matrix (and its sign) alive for the
    backward pass. Here only the centred codes Xc ([n, m]) are saved; each [m, chunk] block of C is
    recomputed in backward. With S = sign(C) (zero diagonal, symmetric) the gradient is
    ∂/∂Xc = 2 Xc S / (n − 1), and the centring passes it through unchanged because its columns
    already sum to zero.
    """

    @staticmethod
    def forward(ctx, codes, chunk_size):
        n, m = codes.shape
        centered = codes - codes.mean(dim=0, keepdim=True)
        total = centered.new_zeros(())
        for start in range(0, m, chunk_size):
            stop = min(start + chunk_size, m)
            block = (centered.T @ centered[:, start:stop]).abs_()
            total += block.sum() - torch.diagonal(block[start:stop]).sum()
        ctx.save_for_backward(centered)
        ctx.chunk_size = chunk_size
        return total / (n - 1)

    @staticmethod
    def backward(ctx, grad_output):
        (centered,) = ctx.saved_tensors
        n, m = centered.shape
        grad = torch.empty_like(centered)
        for start in range(0, m, ctx.chunk_size):
            stop = min(start + ctx.chunk_size, m)
            sign = torch.sign(centered.T @ centered[:, start:stop])
            torch.diagonal(sign[start:stop]).zero_()
            grad[:, start:stop] = centered @ sign
        return grad * (2 * grad_output / (n - 1)), None


COVARIANCE_IMPLEMENTATIONS = ("auto", "dense", "sparse")
# `auto` takes the sparse path when at most this fraction of the deviations D = h − round(mean h) is
# nonzero. Measured with benchmarks/scale.py (CPU, batch 512, m = 3072 and 16384): the sparse path's
# cost grows like b·(ρm)² with the deviation density ρ (every pair of codes that deviate together in a
# row is one term), the dense one like b·m² whatever ρ; they cross between ρ = 1 % and 2 %.
SPARSE_COVARIANCE_DENSITY = 0.01


def code_deviations(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deviations of binary codes from the batch's rounded mean code, and their column sums.

    With r_j = round(mean_b h_bj) (a tie 1/2 rounds to 0, as `torch.round`), D = h − r has entries in
    {−1, 0, 1}; it is sparse when most codes sit at their usual value, whichever it is (a code that
    fires on 97 % of the tokens deviates on 3 %). Cov(h) = Cov(D), since r is constant over the batch.

    Returns:
        `D` (`[b, m]`, dtype of `codes`) and `t` (`[m]` float64), the column sums of D: integers
        with |t_j| ≤ b/2, and t_j = 0 exactly when code j is constant over the batch.
    """
    b = codes.shape[0]
    rounded, counts = rounded_mean_code(codes)
    deviations = codes - rounded.to(codes.dtype)
    return deviations, counts - b * rounded.to(torch.float64)


def rounded_mean_code(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r = round(mean over the batch) of `[b, m]` binary codes (bool, a tie 1/2 rounds to 0) and the
    column counts Σ_b h (float64, exact integers)."""
    b = codes.shape[0]
    # Counts of 0/1 values are exact in float32 up to 2^24 rows, and a float32 sum is several times faster.
    counts = codes.sum(dim=0, dtype=torch.float32 if b <= 2**24 else torch.float64).to(torch.float64)
    return 2 * counts > b, counts


def deviation_density(codes: torch.Tensor) -> float:
    """Fraction of nonzero deviations D = h − round(mean h) in a `[b, m]` batch of binary codes (syncs)."""
    deviations, _ = code_deviations(codes)
    return float(torch.count_nonzero(deviations)) / max(deviations.numel(), 1)


def _key_dtype(deviations: torch.Tensor) -> torch.dtype:
    # b·G_ij − t_i t_j is compared with 0: both products are integers, exact in float32 while
    # b² ≤ 2^24; the (correctly rounded) difference of two exact floats never has the wrong sign.
    b = deviations.shape[0]
    return torch.float32 if deviations.dtype == torch.float32 and b <= 4096 else torch.float64


class _DenseCovariance(torch.autograd.Function):
    """Σ_{i≠j} |C_ij| of binary codes from their deviations, in [m, chunk] blocks of DᵀD, one triangle only.

    (b − 1)·C = DᵀD − t tᵀ / b, so b(b − 1)·C_ij = b·G_ij − t_i t_j with G = DᵀD: integers, computed
    exactly (D is {−1, 0, 1}, a float32 GEMM sums at most b ≤ 2^24 of them), so the sign of every
    C_ij — and with it the gradient 2·Xc·sign(C)/(b − 1) — is exact, ties C_ij = 0 included.

    C is symmetric: each block of columns J only forms the rows i ≤ J (half of DᵀD), and the output is a
    scalar, so the gradient is computed in the same pass, while each sign block is at hand (Xc·S from
    the upper blocks and their transposes), and kept: [b, m], never m×m. That is 1.5 b·m² multiply-adds
    in all, against 3 b·m² for a forward plus a recomputing backward.
    """

    @staticmethod
    def forward(ctx, codes, chunk_size, with_grad):
        b, m = codes.shape
        deviations, t = code_deviations(codes)
        kd = _key_dtype(deviations)
        tk = t.to(kd)
        centered = deviations - (t / b).to(deviations.dtype) if with_grad else None
        grad = torch.zeros_like(deviations) if with_grad else None
        total = torch.zeros((), dtype=torch.float64, device=codes.device)
        for start in range(0, m, chunk_size):
            stop = min(start + chunk_size, m)
            key = (deviations[:, :stop].T @ deviations[:, start:stop]).to(kd).mul_(b)
            key.addr_(tk[:stop], tk[start:stop], alpha=-1)  # rows i < stop of b(b − 1)·C, columns J
            sign = key.sign()
            torch.diagonal(sign[start:stop]).zero_()
            # Σ|C_ij| = Σ C_ij·sign(C_ij): a dot product, no |C| block; the rows above the diagonal block count twice.
            total += 2 * torch.dot(key[:start].view(-1), sign[:start].view(-1)).to(torch.float64)
            total += torch.dot(key[start:stop].view(-1), sign[start:stop].view(-1)).to(torch.float64)
            del key
            if with_grad:
                sign = sign.to(deviations.dtype)
                grad[:, start:stop] += centered[:, :stop] @ sign
                if start:
                    grad[:, :start] += centered[:, start:stop] @ sign[:start].T
        if with_grad:
            ctx.save_for_backward(grad)
        return (total / (b * (b - 1))).to(codes.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        b = grad.shape[0]
        return grad * (2 * grad_output / (b - 1)), None, None


def _sparse_rows_times(deviations_csr: torch.Tensor, other_csr: torch.Tensor, out: torch.Tensor,
                       max_terms: int = 1 << 24) -> torch.Tensor:
    """out += D·E for sparse D (`[b, m]` CSR) and sparse E (`[m, m]` CSR), accumulated into a dense `out`.

    Each nonzero D_ri adds D_ri·E_i,: to row r of `out`: Σ_{(r,i)} nnz(E_i,:) multiply-adds, done as one
    `index_add_` per batch of at most `max_terms` terms (bounded memory). MKL's sparse×sparse product
    would also build a sparse result; accumulating densely is several times faster here.
    """
    b, m = out.shape
    d_crow, d_col, d_val = deviations_csr.crow_indices(), deviations_csr.col_indices(), deviations_csr.values()
    e_crow, e_col, e_val = other_csr.crow_indices(), other_csr.col_indices(), other_csr.values()
    if d_val.numel() == 0 or e_val.numel() == 0:
        return out
    d_row = torch.repeat_interleave(torch.arange(b, device=out.device), d_crow.diff())
    starts = e_crow[d_col]
    counts = e_crow[d_col + 1] - starts
    flat = out.view(-1)
    ends = torch.cumsum(counts, 0)
    first = 0
    while first < counts.numel():
        # the largest batch of D's nonzeros whose terms fit in max_terms (at least one)
        base = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(torch.searchsorted(ends, base + max_terms, right=True)))
        c = counts[first:last]
        which = torch.repeat_interleave(torch.arange(last - first, device=out.device), c)
        offsets = torch.cumsum(c, 0) - c
        position = torch.arange(which.numel(), device=out.device) - offsets[which] + starts[first:last][which]
        target = d_row[first:last][which] * m + e_col[position]
        flat.index_add_(0, target, d_val[first:last][which] * e_val[position])
        first = last
    return out


class _SparseCovariance(torch.autograd.Function):
    """Σ_{i≠j} |C_ij| of binary codes in time and memory that follow the sparsity of the deviations D.

    With t the column sums of D, a = |t|, σ = sign(t) and G = DᵀD (sparse: G_ij ≠ 0 only for codes i,
    j that deviate in a common row, the pattern P),

        b(b − 1)·C_ij = b·G_ij − t_i t_j,  which is −t_i t_j (rank one) off P, so
        b(b − 1)·Σ_{i≠j}|C_ij| = (Σa)² − Σa² + Σ_{(i,j)∈P, i≠j} (|b·G_ij − t_i t_j| − a_i a_j).

    The gradient 2·Xc·S/(b − 1), S = sign(C) with a zero diagonal, splits the same way:
    S = −σσᵀ + diag(σ²) + E with E_ij = sign(C_ij) + σ_iσ_j supported on P, and Xc = D − 1νᵀ
    (ν = t/b), so

        Xc·S = D − 1νᵀ − (Dσ − (Σa/b)·1) σᵀ + D·E − 1(E·ν)ᵀ      (D·diag(σ²) = D: σ_j = 0 only
                                                                    for constant codes, whose D is 0)

    Only G on P (a sparse×sparse product), E (sparse) and D are formed; never an m×m dense matrix.
    Every sign is exact (integers), so this equals the dense formula up to float rounding of sums.
    """

    @staticmethod
    def forward(ctx, codes):
        b, m = codes.shape
        deviations, t = code_deviations(codes)
        a = t.abs()
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used here are tested
            warnings.simplefilter("ignore", UserWarning)
            d_csr = deviations.to_sparse_csr()
        total = a.sum() ** 2 - (a * a).sum()
        if d_csr.values().numel():
            gram = torch.sparse.mm(deviations.T.to_sparse_csr(), d_csr)
            crow, col, g = gram.crow_indices(), gram.col_indices(), gram.values()
            row = torch.repeat_interleave(torch.arange(m, device=codes.device), crow.diff())
            off = row != col
            row, col, g = row[off], col[off], g[off]
            key = b * g.to(torch.float64) - t[row] * t[col]
            total = total + (key.abs() - a[row] * a[col]).sum()
            e = torch.sign(key) + torch.sign(t[row]) * torch.sign(t[col])
            keep = e != 0
            row, col, e = row[keep], col[keep], e[keep].to(codes.dtype)
            e_crow = torch.zeros(m + 1, dtype=torch.long, device=codes.device)
            e_crow[1:] = torch.cumsum(torch.bincount(row, minlength=m), 0)
            e_csr = torch.sparse_csr_tensor(e_crow, col, e, (m, m), check_invariants=False)
        else:
            e_csr = torch.sparse_csr_tensor(torch.zeros(m + 1, dtype=torch.long, device=codes.device),
                                            torch.zeros(0, dtype=torch.long, device=codes.device),
                                            torch.zeros(0, dtype=codes.dtype, device=codes.device), (m, m),
                                            check_invariants=False)
        ctx.save_for_backward(deviations, t, d_csr, e_csr)
        return (total / (b * (b - 1))).to(codes.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        deviations, t, d_csr, e_csr = ctx.saved_tensors
        b, m = deviations.shape
        dtype = deviations.dtype
        sigma = torch.sign(t).to(dtype)
        nu = (t / b).to(dtype)
        spread = deviations @ sigma - float(t.abs().sum() / b)
        grad = deviations - nu - spread[:, None] * sigma[None, :]
        _sparse_rows_times(d_csr, e_csr, grad)
        e_val = e_csr.values()
        if e_val.numel():
            e_row = torch.repeat_interleave(torch.arange(m, device=grad.device), e_csr.crow_indices().diff())
            e_nu = torch.zeros(m, dtype=dtype, device=grad.device).index_add_(0, e_row, e_val * nu[e_csr.col_indices()])
            grad -= e_nu
        return grad * (2 * grad_output / (b - 1))


def _is_binary(codes: torch.Tensor) -> bool:
    return bool(((codes == 0) | (codes == 1)).all())


def covariance_penalty(codes: torch.Tensor, chunk_size: int = 1024, implementation: str = "auto",
                       binary: bool | None = None, sparse_density: float = SPARSE_COVARIANCE_DENSITY) -> torch.Tensor:
    """Σ_{i≠j} |Cov(h_i, h_j)| over the codes of a minibatch, without materialising the m×m matrix.

    Equal to `torch.cov(codes.T).abs().sum() - torch.cov(codes.T).diagonal().abs().sum()` (the
    original's `covarience_of_binary_hidden`), value and gradient. With fewer than two samples no
    covariance is defined and the penalty is 0. Computed in float32 (float64 for float64 codes),
    with autocast switched off: a bf16 product would round the integer sums it relies on.

    Implementations (binary codes):

    - `dense`: DᵀD block by block (`chunk_size` columns; memory O(b·m + m·chunk_size), time O(b·m²)),
      D = h − round(mean h) the deviations from the batch's rounded mean code.
    - `sparse`: the sparse part of DᵀD plus rank-one terms (`_SparseCovariance`); time about
      O(b·(ρm)²) and memory O(b·m + nnz(DᵀD)) for a deviation density ρ.
    - `auto`: `sparse` when the deviation density ρ = nnz(D)/(b·m) is at most `sparse_density`
      (codes of a trained BAE), else `dense` (e.g. at initialisation, when half of the codes fire).

    Codes that are not binary always take the dense float path (centred codes, chunked).

    Args:
        codes: `[n, m]` codes (any real values work; gradients flow into them).
        chunk_size: columns of the covariance computed at once by the dense paths.
        implementation: `auto`, `dense` or `sparse` (see above).
        binary: whether the codes are known to be 0/1 (the BAE's are); None checks them (one pass).
        sparse_density: the `auto` switch point.
    """
    if codes.dim() != 2:
        raise ValueError(f"covariance_penalty expects [n, m] codes, got shape {tuple(codes.shape)}.")
    if implementation not in COVARIANCE_IMPLEMENTATIONS:
        raise ValueError(f"Unknown covariance implementation {implementation!r}; choose "
                         f"{', '.join(COVARIANCE_IMPLEMENTATIONS)}.")
    with torch.autocast(codes.device.type, enabled=False):
        codes = _float(codes)
        if codes.shape[0] < 2:
            return codes.sum() * 0.0
        if binary is None:
            binary = _is_binary(codes.detach())
        if not binary:
            if implementation == "sparse":
                raise ValueError("The sparse covariance needs binary (0/1) codes; use implementation='dense' "
                                 "(or 'auto') for real-valued inputs.")
            return _AbsOffDiagonalCovariance.apply(codes, chunk_size)
        if implementation == "auto":
            sparse = deviation_density(codes.detach()) <= sparse_density
            implementation = "sparse" if sparse else "dense"
        if implementation == "sparse":
            return _SparseCovariance.apply(codes)
        return _DenseCovariance.apply(codes, chunk_size, torch.is_grad_enabled() and codes.requires_grad)


def l1_penalty(latents: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """L1 norm of the latents: `sum` over tokens and latents (original), or `mean` over tokens of the per-token sum."""
    total = _float(latents).abs().sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / max(latents.reshape(-1, latents.shape[-1]).shape[0], 1)
    raise ValueError(f"Unknown L1 reduction {reduction!r}; choose sum or mean.")
