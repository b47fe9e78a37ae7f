"""Notebook 05's checkers, beyond what tests/test_examples.py checks for every notebook.

* bitsandbytes is the judge, and the judge agrees with it: its own maps, codes and absmax pass;
  its CPU build's codes (a 65 536-bin lookup table, emulated here bit for bit) are why a code may
  differ from bitsandbytes' when it is a nearest one;
* each tolerance separates the right answer from the next wrong one: a map built in float64
  passes and a map with one value moved fails; a reciprocal instead of a division passes, a
  neighbouring code fails; the tie rule rejects a distance comparison; a correct 8-bit AdamW in
  bitsandbytes' CUDA order passes while a signed map for v, fp32 AdamW and L2 decay fail;
* the reference 8-bit AdamW is bitsandbytes' algorithm (1e-4 of AdamW8bit once the lookup table
  is emulated); the instructor kernels (effilab.ops) pass every group, LUT and binary search alike;
* kernel exercises give nothing to plain PyTorch; Adafactor's state group rejects a full second
  moment; the GPU tests compare with bitsandbytes' CUDA kernels directly.
"""
import math

import pytest
import torch

from effilab import quant8
from effilab.grading import check, get
from effilab.grading.core import judge_case, key_for
from effilab.grading.specs import nb05, nb05_optim


def failed_plain(name: str, fn, suite: str = "public", seed: int = 0, only=None) -> list[int]:
    """Indices of the groups ``fn`` fails, run without the kernel-provenance wrapper (for PyTorch
    stand-ins of a kernel); ``only``: the group indices to run."""
    ex = get(name)
    out = []
    for gi, g in enumerate(ex.cases(suite, key_for(ex, suite, seed))):
        if only is not None and gi not in only:
            continue
        for case in g.cases:
            r = judge_case(ex, ex.run(fn, case), case)
            if not r.ok:
                out.append(gi)
                break
    return out


@pytest.fixture(scope="module")
def maps():
    return nb05.dynamic_maps("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """Small tensors: torch's thread hand-offs on a shared 2-core machine cost 10× the work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------- exercise 1
def test_bitsandbytes_map_passes_and_a_float64_construction_passes_too():
    f = nb05.bnb_functional()
    assert check("create_dynamic_map", f.create_dynamic_map, verbose=False).passed

    def float64_map(signed=True, max_exponent_bits=7, total_bits=8):
        return f.create_dynamic_map(signed, max_exponent_bits, total_bits).double().nextafter(
            torch.tensor(2.0, dtype=torch.float64)).float()  # every value moved by < 1 fp32 ulp

    assert check("create_dynamic_map", float64_map, verbose=False).passed


def test_a_map_with_one_value_moved_by_a_tenth_of_a_step_fails():
    f = nb05.bnb_functional()

    def moved(signed=True, max_exponent_bits=7, total_bits=8):
        code = f.create_dynamic_map(signed, max_exponent_bits, total_bits)
        code[200] += 0.1 * (code[201] - code[200])
        return code

    v = check("create_dynamic_map", moved, verbose=False)
    assert v.points == 0 and "map" in v.report()


# ---------------------------------------------------------------------------------------------- exercise 2
def _lut_quantize(x: torch.Tensor, code: torch.Tensor, bs: int):
    """bitsandbytes' CPU quantize_blockwise (csrc/cpu_ops.cpp, 0.50): s = x · (1/absmax), rounded to a
    65 536-bin grid over [-1, 1], then a table of the nearest code of each bin's value."""
    n = x.numel()
    nb = -(-n // bs)
    blocks = torch.zeros(nb * bs)
    blocks[:n] = x.reshape(-1).float()
    blocks = blocks.view(nb, bs)
    absmax = blocks.abs().amax(1)
    s = torch.where(absmax[:, None] > 0, blocks * (1.0 / absmax)[:, None], 0.0).clamp(-1, 1)
    bins = -1.0 + (2.0 * torch.arange(65536, dtype=torch.float32)) / 65535
    lut = torch.bucketize(bins, quant8.midpoints(code))
    q = lut[((s + 1.0) * 0.5 * 65535 + 0.5).long()]
    q[absmax == 0] = 0
    return q.reshape(-1)[:n].to(torch.uint8), absmax


def test_bitsandbytes_cpu_codes_are_its_lookup_table(maps):
    x = torch.randn(70_000) * torch.exp(3 * torch.randn(70_000))
    q_b, st = nb05.bnb_functional().quantize_blockwise(x, code=maps[0].clone(), blocksize=256)
    q_l, a_l = _lut_quantize(x, maps[0], 256)
    assert torch.equal(q_b, q_l) and torch.equal(st.absmax, a_l)
    q_exact, _ = quant8.quantize_blockwise_torch(x, maps[0], 256)
    assert (q_exact != q_b).float().mean() > 0.01  # which is why the judge accepts a nearest code


def test_the_judge_accepts_bitsandbytes_own_output_and_the_exact_rule(maps):
    bnbf = nb05.bnb_functional()

    def bnb_quantize(x, code, blocksize=256):
        q, st = bnbf.quantize_blockwise(x.contiguous(), code=code.clone(), blocksize=blocksize)
        return q.view(x.shape), st.absmax

    ties = 5
    assert failed_plain("quantize_blockwise", bnb_quantize) == [ties]  # bitsandbytes' CPU ties are not a rule
    assert failed_plain("quantize_blockwise", quant8.quantize_blockwise_torch) == []
    assert failed_plain("quantize_blockwise", quant8.quantize_blockwise_torch, "hidden", 2024) == []


def test_a_reciprocal_passes_and_a_neighbouring_code_fails(maps):
    def reciprocal(x, code, blocksize=256):
        q, a = quant8.quantize_blockwise_torch(x, code, blocksize)
        blocks, n = quant8._padded_blocks(x, blocksize)
        s = blocks * (1.0 / torch.where(a > 0, a, torch.ones_like(a)))[:, None]
        return torch.bucketize(s, quant8.midpoints(code)).reshape(-1)[:n].to(torch.uint8).view(x.shape), a

    assert failed_plain("quantize_blockwise", reciprocal, only=[1, 2, 4]) == []

    def off_by_one(x, code, blocksize=256):
        q, a = quant8.quantize_blockwise_torch(x, code, blocksize)
        flat = q.reshape(-1).clone()
        i = int(flat.numel() // 2)
        flat[i] = flat[i] + 1 if flat[i] < 255 else flat[i] - 1
        return flat.view(q.shape), a

    assert failed_plain("quantize_blockwise", off_by_one, only=[1, 2]) == [1, 2]


def test_ties_reject_a_nearest_by_distance_rule(maps):
    def by_distance(x, code, blocksize=256):
        q, a = quant8.quantize_blockwise_torch(x, code, blocksize)
        blocks, n = quant8._padded_blocks(x, blocksize)
        s = blocks / torch.where(a > 0, a, torch.ones_like(a))[:, None]
        lo = torch.bucketize(s, code.float()).clamp(1, 255) - 1  # code[lo] <= s < code[lo + 1]
        up = (s - code[lo]).abs() > (code[(lo + 1).clamp(max=255)] - s).abs()  # ties: distance, in fp32
        return (lo + up.long()).reshape(-1)[:n].to(torch.uint8).view(x.shape), a

    assert failed_plain("quantize_blockwise", by_distance, only=[5]) == [5]


def test_plain_pytorch_earns_nothing_in_the_kernel_exercises():
    v = check("quantize_blockwise", quant8.quantize_blockwise_torch, verbose=False)
    assert v.points == 0 and "PyTorch ops" in v.report()
    v = check("adamw8bit_step", quant8.quantized_adamw_step, verbose=False)
    assert v.points == 0 and "PyTorch ops" in v.report()


def test_per_tensor_absmax_gets_its_own_hint():
    def per_tensor(x, code, blocksize=256):
        q, a = quant8.quantize_blockwise_torch(x, code, None)
        return q, a.expand(-(-x.numel() // blocksize)).contiguous()

    ex = get("quantize_blockwise")
    case = ex.cases("public", key_for(ex, "public"))[1].cases[0]
    r = judge_case(ex, ex.run(per_tensor, case), case)
    assert not r.ok and "one absmax per block" in r.hint


def test_reference_kernels_pass_with_the_lookup_table_and_with_the_binary_search(maps):
    from effilab.ops.blockwise_quant import build_tables, dequantize_blockwise, quantize_blockwise

    for code in (*maps, quant8.linear_map(True), quant8.linear_map(False)):
        assert build_tables(code)[0] is not None
    for use_lut in (True, False):  # (run without the provenance wrapper: these kernels are not notebook code)
        assert failed_plain("quantize_blockwise", lambda x, c, b=256, u=use_lut: quantize_blockwise(x, c, b, use_lut=u)) == []
    assert failed_plain("quantize_blockwise", quantize_blockwise, "hidden", 12345) == []
    assert failed_plain("dequantize_blockwise", dequantize_blockwise) == []


def test_lookup_table_equals_the_rule_at_every_edge(maps):
    from effilab.ops.blockwise_quant import _bucket_edges, quantize_blockwise

    for code in maps:
        mids = quant8.midpoints(code)
        edges = _bucket_edges()[1:-1]
        inf = torch.tensor(float("inf"))
        special = torch.cat([mids, mids.nextafter(inf), mids.nextafter(-inf), edges, edges.nextafter(-inf), -edges,
                             -edges.nextafter(-inf), torch.tensor([0.0, -0.0, 1e-40, -1e-40, 1.0, -1.0])])
        special = special[special.abs() <= 1]
        x = torch.cat([torch.tensor([1.0]), special])  # absmax exactly 1: s = x
        q, _ = quantize_blockwise(x, code, 4096, use_lut=True)
        q_ref, _ = quant8.quantize_blockwise_torch(x, code, 4096)
        assert torch.equal(q, q_ref)


# ---------------------------------------------------------------------------------------------- exercise 3
def _run_bnb(p0, grads, hp):
    import bitsandbytes as bnb

    p = torch.nn.Parameter(p0.clone())
    opt = bnb.optim.AdamW8bit([p], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                              weight_decay=hp["weight_decay"], min_8bit_size=1)
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


def _run_step(step_fn, p0, grads, hp, maps):
    p, state = p0.clone(), {"qmap_m": maps[0], "qmap_v": maps[1]}
    out = []
    for t, g in enumerate(grads, 1):
        step_fn(p, g, state, t, **hp)
        out.append(p.clone())
    return out


def _err(a, b, p0):
    return nb05_optim._rel(a - p0, b - p0)


def _lut_step(p, g, state, step, lr, beta1, beta2, eps, weight_decay):
    """The reference step with bitsandbytes' CPU lookup-table rounding: AdamW8bit on a CPU, exactly."""
    saved = quant8.quantize_blockwise_torch
    quant8.quantize_blockwise_torch = lambda x, code, bs=256: _lut_quantize(x, code, bs)
    try:
        quant8.quantized_adamw_step(p, g, state, step, lr, beta1, beta2, eps, weight_decay)
    finally:
        quant8.quantize_blockwise_torch = saved


def test_reference_is_bitsandbytes_algorithm(maps):
    hp = dict(nb05_optim.DEFAULT_HP, lr=2e-3, weight_decay=0.05)
    for s in range(3):
        p0, grads = nb05_optim._adam_inputs(s, (5000,), 20)
        theirs = _run_bnb(p0, grads, hp)
        emulated = _run_step(_lut_step, p0, grads, hp, maps)
        exact = _run_step(quant8.quantized_adamw_step, p0, grads, hp, maps)
        assert max(_err(a, b, p0) for a, b in zip(emulated, theirs)) < 1e-4
        assert max(_err(a, b, p0) for a, b in zip(exact, theirs)) < 2e-2  # the lookup table's rounding, no more


def _cuda_order_step(p, g, state, step, lr, beta1, beta2, eps, weight_decay):
    """A correct 8-bit AdamW in bitsandbytes' CUDA order: Adam step first, decay after, eps·√(1-β2ᵗ) form."""
    if "m" not in state:
        state.update(quant8.new_8bit_state(p))
    qm, qv = state["qmap_m"], state["qmap_v"]
    m = quant8.dequantize_blockwise_torch(state["m"], state["m_absmax"], qm) * beta1 + (1 - beta1) * g.reshape(-1).float()
    v = quant8.dequantize_blockwise_torch(state["v"], state["v_absmax"], qv) * beta2 + (1 - beta2) * g.reshape(-1).float() ** 2
    c2 = math.sqrt(1 - beta2 ** step)
    p32 = p.reshape(-1).float() + (-lr * c2 / (1 - beta1 ** step)) * (m / (v.sqrt() + eps * c2))
    p.copy_((p32 * (1 - lr * weight_decay)).view(p.shape))
    for k, val, code in (("m", m, qm), ("v", v, qv)):
        q, a = quant8.quantize_blockwise_torch(val, code)
        state[k].copy_(q)
        state[k + "_absmax"].copy_(a)


def _signed_v_step(p, g, state, step, **hp):
    state["qmap_v"] = state["qmap_m"]
    quant8.quantized_adamw_step(p, g, state, step, **hp)


def _fp32_adamw_step(p, g, state, step, lr, beta1, beta2, eps, weight_decay):
    if "opt" not in state:
        state["param"] = torch.nn.Parameter(p.detach().clone().float())
        state["opt"] = torch.optim.AdamW([state["param"]], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    state["param"].grad = g.float()
    state["opt"].step()
    p.copy_(state["param"].detach())


def _l2_step(p, g, state, step, weight_decay, **hp):
    quant8.quantized_adamw_step(p, g + weight_decay * p, state, step, weight_decay=0.0, **hp)


def test_adam_tolerance_separates_correct_kernels_from_the_nearest_wrong_ones():
    assert failed_plain("adamw8bit_step", _cuda_order_step, only=[0, 1, 2, 3]) == []
    assert failed_plain("adamw8bit_step", _cuda_order_step, "hidden", 12345, only=[2]) == []
    assert 1 in failed_plain("adamw8bit_step", _signed_v_step, only=[1])
    assert 4 in failed_plain("adamw8bit_step", _signed_v_step, only=[4])
    assert failed_plain("adamw8bit_step", _fp32_adamw_step, only=[1]) == [1]
    assert failed_plain("adamw8bit_step", _l2_step, only=[2]) == [2]


def test_signed_map_for_v_misses_the_tolerance_by_a_margin(maps):
    ex = get("adamw8bit_step")
    worst_ok, best_bad = 0.0, math.inf
    for case in ex.cases("public", key_for(ex, "public"))[1].cases:
        ref, _ = nb05_optim._reference_run(case)
        p0, grads, _, _, hp = case.args
        ok = _run_step(_cuda_order_step, p0, grads, hp, maps)
        bad = _run_step(_signed_v_step, p0, grads, hp, maps)
        worst_ok = max(worst_ok, max(_err(a, b, p0) for a, b in zip(ok, ref)))
        best_bad = min(best_bad, _err(bad[-1], ref[-1], p0))
    assert worst_ok < nb05_optim.ADAM_TOL / 2 < nb05_optim.ADAM_TOL * 2 < best_bad, (worst_ok, best_bad)


def test_fp32_moments_in_the_state_fail_the_state_group():
    def fp32_state(p, g, state, step, **hp):
        _fp32_adamw_step(p, g, state, step, **hp)
        opt_state = state["opt"].state[state["param"]]
        state["m"], state["v"] = opt_state["exp_avg"], opt_state["exp_avg_sq"]

    ex = get("adamw8bit_step")
    case = ex.cases("public", key_for(ex, "public"))[4].cases[0]
    r = judge_case(ex, ex.run(fp32_state, case), case)
    assert not r.ok and "bytes per parameter" in r.problem


def test_reference_kernel_passes_with_both_searches():
    from effilab.ops.adamw8bit import adamw8bit_step

    assert failed_plain("adamw8bit_step", lambda *a, **k: adamw8bit_step(*a, use_lut=True, **k)) == []
    assert failed_plain("adamw8bit_step", lambda *a, **k: adamw8bit_step(*a, use_lut=False, **k), only=[0]) == []


def test_fused_optimizer_wrapper_keeps_small_tensors_in_fp32_like_adamw():
    torch.manual_seed(0)
    small = torch.nn.Parameter(torch.randn(100))
    big = torch.nn.Parameter(torch.randn(5000))
    twin = torch.nn.Parameter(small.detach().clone())
    maps = nb05.dynamic_maps()
    opt = quant8.Fused8bitAdamW([small, big], *maps, lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW([twin], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(100)
        small.grad, twin.grad, big.grad = g.clone(), g.clone(), torch.randn(5000)
        opt.step()
        ref.step()
    assert torch.allclose(small, twin, rtol=1e-6, atol=1e-7)
    assert opt.state[big]["m"].dtype == torch.uint8 and opt.state[small]["exp_avg"].dtype == torch.float32
    per = quant8.state_bytes(opt) - 8 * 100 - 2 * 256 * 4  # the maps are shared, counted once
    assert per / 5000 < nb05_optim.MAX_STATE_BYTES


# ---------------------------------------------------------------------------------------------- exercise 4
def test_adafactor_reference_passes_and_a_full_second_moment_fails_the_state_group():
    assert check("Adafactor", torch.optim.Adafactor, verbose=False).passed

    class Full(torch.optim.Adafactor):  # the right updates, plus a full n×m second moment kept beside them
        @torch.no_grad()
        def step(self, closure=None):
            super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["full_v"] = p.grad * p.grad

    v = check("Adafactor", Full, verbose=False)
    assert [i for i, g in enumerate(v.groups) if not g.passed] == [4], v.report()


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_gpu_reference_kernel_follows_bitsandbytes_cuda_adamw8bit(maps):
    from effilab.ops.adamw8bit import adamw8bit_step

    dev_maps = tuple(m.cuda() for m in maps)
    hp = dict(nb05_optim.DEFAULT_HP)
    for s in range(3):
        p0, grads = nb05_optim._adam_inputs(s, (1823, 781), 20, dev="cuda")
        theirs = _run_bnb(p0, grads, hp)
        mine = _run_step(adamw8bit_step, p0, grads, hp, dev_maps)
        assert max(_err(a.double(), b.double(), p0.double()) for a, b in zip(mine, theirs)) < nb05_optim.ADAM_TOL / 2


@pytest.mark.gpu
def test_gpu_bitsandbytes_codes_are_the_nearest_codes(maps):
    bnbf = nb05.bnb_functional()
    code = maps[0].cuda()
    x = torch.randn(1 << 22, device="cuda") * torch.exp(2 * torch.randn(1 << 22, device="cuda"))
    q_b, st = bnbf.quantize_blockwise(x, code=code, blocksize=256)
    q_rule, a_rule = quant8.quantize_blockwise_torch(x.cpu(), maps[0], 256)
    assert torch.equal(st.absmax.cpu(), a_rule)
    # where bitsandbytes' CUDA code differs from the rule (near-ties only), it is still a nearest code
    problem = nb05._code_problem(x.cpu(), q_b.cpu(), q_rule, a_rule, maps[0], 256)
    assert problem is None, problem
    assert (q_b.cpu() != q_rule).float().mean() < 1e-4


@pytest.mark.gpu
def test_gpu_reference_kernels_pass_correctness_and_memory_on_a_gpu():
    from effilab.ops.adamw8bit import adamw8bit_step
    from effilab.ops.blockwise_quant import quantize_blockwise

    assert failed_plain("quantize_blockwise", quantize_blockwise) == []
    assert failed_plain("adamw8bit_step", adamw8bit_step) == []
    ex = get("adamw8bit_step")  # the memory part, measured and decided as the grader does (no provenance)
    from effilab.grading.measure import decide_memory, measure_memory

    part = ex.memory_part(key_for(ex, "public"))
    v = decide_memory(ex, part, measure_memory(ex, part, adamw8bit_step), {})
    assert v.passed, v.report()


# ---------------------------------------------------------------------------------------------- effilab.quant8
def test_quant8_memory_breakdown_counts_adamw_at_16_bytes_per_parameter():
    from effilab.models import GPT, GPTConfig

    model = GPT(GPTConfig.preset("cpu-tiny"), seed=0)
    x = torch.randint(0, 256, (2, 16))
    m = quant8.memory_breakdown(model, lambda ps: torch.optim.AdamW(ps, lr=1e-3), (x, x))
    assert (m["weights"] + m["grads"] + m["optimizer"]) / m["n_params"] == 16.0


def test_quant8_linear_maps_zero_what_the_dynamic_map_keeps(maps):
    v = torch.logspace(-6, 0, 1000)  # six decades below the absmax
    lin, dyn = quant8.quantization_report(v, {"linear": (quant8.linear_map(False), None), "dynamic": (maps[1], None)})
    assert lin["zeroed"] > 0.5 and dyn["zeroed"] == 0.0
    assert quant8.linear_map(True).numel() == quant8.linear_map(False).numel() == 256


def test_quant8_paged_demo_says_it_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("the CPU behaviour")
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        quant8.paged_optimizer_demo(1024)
