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
    row_bytes,              # K // 2, bytes per packed row: an argument, so Triton sees when it is a multiple
                            # of 16 (it specialises such integers) and loads 16 bytes at a time
    GROUP: tl.constexpr,    # columns per quantization group
    BLOCK_M: tl.constexpr,  # rows of x per program (1: the GEMV path)
    BLOCK_N: tl.constexpr,  # weight rows (outputs) per program
    BLOCK_K: tl.constexpr,  # columns of K per loop step
    CHUNK: tl.constexpr,    # columns per chunk: a power of two dividing GROUP (one scale and zero per chunk)
    USE_DOT: tl.constexpr,  # tl.dot tiles (BLOCK_M >= 16) or an elementwise GEMV
):
    ### BEGIN SOLUTION
    NC: tl.constexpr = BLOCK_K // CHUNK                          # chunks per K step
    HC: tl.constexpr = CHUNK // 2                                # bytes per chunk and weight row
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    n64 = offs_n.to(tl.int64)
    offs_c = tl.arange(0, NC)
    offs_b = offs_c[:, None] * HC + tl.arange(0, HC)[None, :]   # (NC, HC) byte offsets inside a step
    n_groups = K // GROUP
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, tl.cdiv(K, BLOCK_K)):
        col = step * BLOCK_K + offs_c * CHUNK                    # (NC,) first column of each chunk
        c_ok = col < K
        p = tl.load(qw_ptr + n64[:, None, None] * row_bytes + (step * (BLOCK_K // 2) + offs_b)[None, :, :],
                    mask=n_ok[:, None, None] & c_ok[None, :, None], other=0)   # (BLOCK_N, NC, HC) bytes
        g = col // GROUP                                         # a chunk lies in one group
        sz_mask = n_ok[:, None] & c_ok[None, :]
        s = tl.load(s_ptr + n64[:, None] * n_groups + g[None, :], mask=sz_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + n64[:, None] * n_groups + g[None, :], mask=sz_mask, other=0).to(tl.float32)
        if USE_DOT:                                              # dequantize the tile, two tl.dots
            w_lo = tl.reshape(((p & 15).to(tl.float32) - z[:, :, None]) * s[:, :, None], (BLOCK_N, BLOCK_K // 2))
            w_hi = tl.reshape(((p >> 4).to(tl.float32) - z[:, :, None]) * s[:, :, None], (BLOCK_N, BLOCK_K // 2))
            j = step * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
            xmask = (offs_m < M)[:, None] & (j < K // 2)[None, :]
            x_even = x_ptr + offs_m.to(tl.int64)[:, None] * K + 2 * j[None, :]
            x_lo = tl.load(x_even, mask=xmask, other=0.0)
            x_hi = tl.load(x_even + 1, mask=xmask, other=0.0)
            acc += tl.dot(x_lo, tl.trans(w_lo.to(x_lo.dtype)))
            acc += tl.dot(x_hi, tl.trans(w_hi.to(x_hi.dtype)))
        else:                                                    # one row: s·(Σ x·q − z·Σ x) per chunk
            offs_x = step * BLOCK_K + offs_c[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
            xx = tl.load(x_ptr + tl.program_id(1).to(tl.int64) * K + offs_x, mask=c_ok[:, None], other=0.0)
            x_lo, x_hi = tl.split(tl.reshape(xx.to(tl.float32), (NC, HC, 2)))   # even and odd columns
            qx = tl.sum((p & 15).to(tl.float32) * x_lo[None, :, :] + (p >> 4).to(tl.float32) * x_hi[None, :, :],
                        axis=2)                                  # (BLOCK_N, NC)
            xsum = tl.sum(x_lo + x_hi, axis=1)                   # (NC,)
            acc += tl.sum(s * (qx - z * xsum[None, :]), axis=1)[None, :]
    ymask = (offs_m < M)[:, None] & n_ok[None, :]
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
    elif M < 16:                        # decode: 4 rows a program, 2048 columns a step (H200 sweep)
        bm, bn, bk, warps, stages = 1, 4, 2048, 4, 2
    else:
        bm, bn, bk, warps, stages = 16, 32, 512, 4, 2
    bk = min(bk, triton.next_power_of_2(K))
    chunk = min(group_size & -group_size, bk)   # the largest power of two dividing the group
    grid = (triton.cdiv(N, bn), triton.cdiv(M, bm))
    w4a16_kernel[grid](x, qweight, scales, zeros, y, M, N, K, K // 2, GROUP=group_size, BLOCK_M=bm, BLOCK_N=bn,
                       BLOCK_K=bk, CHUNK=chunk, USE_DOT=bm >= 16, num_warps=warps, num_stages=stages)
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
