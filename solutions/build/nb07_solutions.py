"""The solution cells of notebook 07 (imported by solutions/build/nb07.py, which writes the notebook).

Each string is one solution cell: the signature, a docstring with an argument comment per
parameter, and the ``### BEGIN SOLUTION`` region inside the body.
"""

QUANTIZE_RTN = '''
def quantize_rtn(w: torch.Tensor, bits: int = 4, group_size: int = 128, symmetric: bool = False):
    """Round-to-nearest quantization of a weight matrix, group by group along its rows.

    Args:
        w: (N, K) weights of an nn.Linear (out_features × in_features), any float dtype.
        bits: 2..8 bits per code.
        group_size: columns per group (must divide K); -1 means one group per row.
        symmetric: True for scale = max|w| / (2**(bits-1) - 1) and zero = 2**(bits-1);
            False for the range [min(w, 0), max(w, 0)] with an integer zero point.
    Returns:
        (q, scale, zero): q uint8 (N, K) codes in [0, 2**bits - 1], scale fp32 (N, K // G),
        zero uint8 (N, K // G); the weight of a code is (q - zero) * scale. Computed in fp32.
    """
    ### BEGIN SOLUTION
    n, k = w.shape
    g = k if group_size == -1 else group_size
    if k % g:
        raise ValueError(f"group_size {group_size} must divide in_features {k}")
    wg = w.float().reshape(n, k // g, g)
    if symmetric:
        scale = wg.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        lo = wg.amin(-1, keepdim=True).clamp(max=0)
        hi = wg.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / (2 ** bits - 1)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)   # an all-zero group
        zero = torch.round(-lo / scale)
    q = (torch.round(wg / scale) + zero).clamp(0, 2 ** bits - 1)      # round half to even
    return q.to(torch.uint8).reshape(n, k), scale.squeeze(-1), zero.squeeze(-1).to(torch.uint8)
    ### END SOLUTION
'''

DEQUANTIZE_RTN = '''
def dequantize_rtn(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """The weights the codes stand for: (q - zero) * scale, each group's parameters over its columns.

    Args:
        q: uint8 (N, K) codes.
        scale: fp32 (N, K // G) scales.
        zero: uint8 (N, K // G) zero points.
        group_size: columns per group; -1 means one group per row.
    Returns:
        fp32 (N, K) dequantized weights.
    """
    ### BEGIN SOLUTION
    n, k = q.shape
    g = k if group_size == -1 else group_size
    wq = q.float().reshape(n, k // g, g) - zero.float()[..., None]
    return (wq * scale.float()[..., None]).reshape(n, k)
    ### END SOLUTION
'''

PACK = '''
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes a byte along the last dimension: column 2j in bits 0-3, column 2j+1 in bits 4-7.

    Args:
        q: uint8 codes in 0..15, shape (..., K) with K even.
    Returns:
        uint8 (..., K // 2).
    """
    ### BEGIN SOLUTION
    if q.dtype != torch.uint8 or q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs uint8 codes with an even last dimension, got {q.dtype} {tuple(q.shape)}")
    return q[..., 0::2] | (q[..., 1::2] << 4)
    ### END SOLUTION


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4.

    Args:
        packed: uint8 (..., K // 2).
    Returns:
        uint8 codes (..., K): the low nibble of byte j is column 2j, the high nibble column 2j+1.
    """
    ### BEGIN SOLUTION
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    ### END SOLUTION
'''

GPTQ = '''
def gptq_quantize(W: torch.Tensor, X: torch.Tensor, bits: int = 4, group_size: int = 128, act_order: bool = False,
                  damp: float = 0.01, block_size: int = 128):
    """GPTQ (Frantar et al. 2022) for one linear layer, with zero points.

    Args:
        W: (N, K) weights of the layer (out_features × in_features).
        X: (n, K) calibration inputs of the layer (one row per token).
        bits: bits per code.
        group_size: columns per group, in the order of quantization; -1: one group per row.
        act_order: quantize the columns by decreasing diag(H) (and group them in that order).
        damp: λ = damp · mean(diag(H)) is added to the diagonal of H.
        block_size: columns per lazy batch update.
    Returns:
        (q, scale, zero, g_idx): q uint8 (N, K) in the ORIGINAL column order, scale fp32 and zero
        uint8 (N, K // G), g_idx int64 (K,) the group of each column.
    """
    ### BEGIN SOLUTION
    W = W.detach().float().clone()
    n, k = W.shape
    g = k if group_size == -1 else group_size
    X = X.float()
    H = 2.0 * X.T @ X / X.shape[0]
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else torch.arange(k, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    H.diagonal().add_(damp * H.diagonal().mean())
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    dev = W.device
    q = torch.zeros(n, k, device=dev)
    scales, zeros = torch.zeros(n, k // g, device=dev), torch.zeros(n, k // g, device=dev)
    top = 2 ** bits - 1
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1, Hinv1, Err1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2], torch.zeros(n, i2 - i1, device=dev)
        for i in range(i2 - i1):
            j = i1 + i
            if j % g == 0:                       # a new group: parameters of the weights as they are now
                cur = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                lo, hi = cur.amin(1).clamp(max=0), cur.amax(1).clamp(min=0)
                scale = (hi - lo) / top
                scale = torch.where(scale == 0, torch.ones_like(scale), scale)
                zero = torch.round(-lo / scale)
                scales[:, j // g], zeros[:, j // g] = scale, zero
            w = W1[:, i]
            q[:, j] = (torch.round(w / scale) + zero).clamp(0, top)
            err = (w - (q[:, j] - zero) * scale) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]     # lazy batch update of the columns after the block
    inv = torch.argsort(perm)
    g_idx = (torch.arange(k, device=dev) // g)[inv]
    return q[:, inv].to(torch.uint8), scales, zeros.to(torch.uint8), g_idx
    ### END SOLUTION
'''

AWQ = '''
def awq_search_scales(W: torch.Tensor, X: torch.Tensor, bits: int = 4, group_size: int = 128, n_grid: int = 20):
    """AWQ's scale search (Lin et al. 2023): s = s_x ** α with the best α of a grid.

    Args:
        W: (N, K) weights of the layer.
        X: (n, K) calibration inputs of the layer.
        bits, group_size: the RTN quantizer (with zero points) applied to W · diag(s).
        n_grid: α takes the values 0, 1/n_grid, ..., (n_grid - 1)/n_grid.
    Returns:
        s: fp32 (K,) positive scales; the quantized layer is Q(W · diag(s)) · diag(s)^-1.
    """
    ### BEGIN SOLUTION
    W, X = W.float(), X.float()
    s_x = X.abs().mean(0)
    y = X @ W.T
    best, best_s = float("inf"), torch.ones_like(s_x)
    for i in range(n_grid):
        s = s_x.pow(i / n_grid).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        w_hat = dequantize_rtn(*quantize_rtn(W * s, bits, group_size), group_size) / s
        err = float(((X @ w_hat.T - y) ** 2).mean())
        if err < best:
            best, best_s = err, s
    return best_s
    ### END SOLUTION
'''

W4A16 = '''
@triton.jit
def w4a16_kernel(
    x_ptr,                  # pointer to x, (M, K) contiguous, fp16 / bf16 / fp32
    qw_ptr,                 # pointer to the packed codes, (N, K // 2) uint8, contiguous
    s_ptr,                  # pointer to the scales, (N, K // GROUP), x's dtype, contiguous
    z_ptr,                  # pointer to the zero points, (N, K // GROUP) uint8, contiguous
    y_ptr,                  # pointer to the output, (M, N) contiguous, x's dtype
    M, N, K,                # sizes
    GROUP: tl.constexpr,    # columns per quantization group
    BLOCK_M: tl.constexpr,  # rows of x per program (1: the GEMV path)
    BLOCK_N: tl.constexpr,  # weight rows (outputs) per program
    BLOCK_K: tl.constexpr,  # columns of K per loop step
    USE_DOT: tl.constexpr,  # tl.dot tiles (BLOCK_M >= 16) or an elementwise GEMV
):
    ### BEGIN SOLUTION
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, BLOCK_K // 2)
    n64 = offs_n.to(tl.int64)
    n_groups = K // GROUP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        j = k0 // 2 + offs_j                                     # byte index: columns 2j and 2j + 1
        wmask = (offs_n < N)[:, None] & (j < K // 2)[None, :]
        p = tl.load(qw_ptr + n64[:, None] * (K // 2) + j[None, :], mask=wmask, other=0)
        grp = (2 * j) // GROUP
        s = tl.load(s_ptr + n64[:, None] * n_groups + grp[None, :], mask=wmask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n64[:, None] * n_groups + grp[None, :], mask=wmask, other=0).to(tl.float32)
        w_lo = ((p & 15).to(tl.float32) - z) * s                 # even columns
        w_hi = ((p >> 4).to(tl.float32) - z) * s                 # odd columns
        xmask = (offs_m < M)[:, None] & (j < K // 2)[None, :]
        x_even = x_ptr + offs_m.to(tl.int64)[:, None] * K + 2 * j[None, :]
        x_lo = tl.load(x_even, mask=xmask, other=0.0)
        x_hi = tl.load(x_even + 1, mask=xmask, other=0.0)
        if USE_DOT:
            acc += tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)))
            acc += tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)))
        else:
            acc += tl.sum(x_lo.to(tl.float32) * w_lo + x_hi.to(tl.float32) * w_hi, axis=1)[None, :]
    ymask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(y_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=ymask)
    ### END SOLUTION


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int = 128) -> torch.Tensor:
    """y = x @ Ŵᵀ with Ŵ[n, k] = (code[n, k] - zeros[n, k // G]) * scales[n, k // G], one Triton kernel.

    Args:
        x: (M, K) activations, fp16 / bf16 (fp32 accepted).
        qweight: (N, K // 2) uint8 packed codes (pack_int4 layout).
        scales: (N, K // G) scales in x's dtype.
        zeros: (N, K // G) uint8 zero points.
        group_size: G, columns per group (divides K).
    Returns:
        (M, N) in x's dtype, accumulated in fp32.
    """
    ### BEGIN SOLUTION
    x, qweight, scales, zeros = x.contiguous(), qweight.contiguous(), scales.contiguous(), zeros.contiguous()
    M, K = x.shape
    N = qweight.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if INTERPRET:                       # CPU: few, fat programs
        bm, bn, bk, warps, stages = (1 if M < 16 else 16), 64, 128, 4, 1
    elif M < 16:                        # decode: many narrow programs, wide loads along K
        bm, bn, bk, warps, stages = 1, 16, 256, 4, 3
    else:
        bm, bn, bk, warps, stages = 16, 64, 128, 4, 3
    grid = (triton.cdiv(N, bn), triton.cdiv(M, bm))
    w4a16_kernel[grid](x, qweight, scales, zeros, y, M, N, K, GROUP=group_size, BLOCK_M=bm, BLOCK_N=bn,
                       BLOCK_K=bk, USE_DOT=bm >= 16, num_warps=warps, num_stages=stages)
    return y
    ### END SOLUTION
'''

QUANTIZE_MODEL = '''
def quantize_model(model, calib: torch.Tensor, bits: int = 4, group_size: int = 128, method: str = "gptq") -> dict:
    """Quantize every linear layer of the course model's blocks, in forward order.

    Args:
        model: the course GPT (modified in place: each layer's weight becomes its dequantized weight).
        calib: int64 (n, T + 1) calibration windows (the model reads calib[:, :-1]).
        bits, group_size: the quantizer.
        method: "rtn", "gptq" or "awq".
    Returns:
        {layer name: {"q", "scale", "zero", "g_idx"}} (AWQ adds "s": Ŵ = dequantized / s).
    """
    ### BEGIN SOLUTION
    out = {}
    for name in linear_names(model):
        layer = model.get_submodule(name)
        W = layer.weight.data
        k = W.shape[1]
        g_idx = torch.arange(k) // (k if group_size == -1 else group_size)
        s = None
        if method == "rtn":
            q, scale, zero = quantize_rtn(W, bits, group_size)
        else:
            X = linear_inputs(model, calib, [name])[name]   # inputs on the model quantized so far
            if method == "gptq":
                q, scale, zero, g_idx = gptq_quantize(W, X, bits, group_size)
            elif method == "awq":
                s = awq_search_scales(W, X[:512], bits, group_size)   # AWQ needs few tokens
                q, scale, zero = quantize_rtn(W * s, bits, group_size)
            else:
                raise ValueError(f"method must be 'rtn', 'gptq' or 'awq', got {method!r}")
        w_hat = (q.float() - zero.float()[:, g_idx]) * scale[:, g_idx]
        layer.weight.data = w_hat if s is None else w_hat / s
        out[name] = {"q": q, "scale": scale, "zero": zero, "g_idx": g_idx} | ({} if s is None else {"s": s})
    return out
    ### END SOLUTION
'''
