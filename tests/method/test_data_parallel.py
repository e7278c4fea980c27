"""Data-parallel DreamBooth on 2 ranks (torch.multiprocessing + gloo on 127.0.0.1, no Ray).

The maths of DDP checked by construction: 2 ranks x batch 1 take the same step as one process
with batch 2 on the same samples (each rank's draws are recorded and replayed). Also: all ranks
end with identical weights (LoRA's random init differs per rank until broadcast), only rank 0
writes, and an interrupted run resumes every rank's generator.
"""

from __future__ import annotations

import json
import pickle
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from db3d.core.config import DreamBoothConfig
from db3d.method import dreambooth
from db3d.method.class_images import class_images
from db3d.method.data_parallel import data_parallel, rank_and_world

WORLD = 2
SGD = dict(mode="full", batch_size=1, prior_preservation=False, learning_rate=0.05, max_grad_norm=1.0,
           resume_every=0)
LORA = dict(mode="lora", lora_rank=4, batch_size=1, prior_preservation=True, learning_rate=1e-3, resume_every=2)


def _images(n: int = 3, res: int = 64) -> torch.Tensor:
    """(n, 3, res, res) flat-coloured squares on white."""
    g = torch.Generator().manual_seed(0)
    imgs = torch.ones(n, 3, res, res)
    for i in range(n):
        imgs[i, :, res // 4: 3 * res // 4, res // 4: 3 * res // 4] = torch.rand(3, 1, 1, generator=g)
    return imgs


class _Spy:
    """Records a run's draws, its trainable parameters (at the start and after the run) and its
    checkpoint writes; optionally swaps AdamW for plain SGD (an update linear in the gradient)."""

    def __init__(self, sgd: bool):
        self.sgd, self.draws, self.params, self.start, self.saves = sgd, [], None, None, 0

    def install(self, setattr_) -> None:
        real_draw, real_adamw, real_save = dreambooth._draw_batch, torch.optim.AdamW, dreambooth.save_checkpoint

        def draw(*args, **kwargs):
            self.draws.append(real_draw(*args, **kwargs))
            return self.draws[-1]

        def optimizer(params, lr, weight_decay, fused):
            self.params, self.start = params, [p.detach().clone() for p in params]
            return torch.optim.SGD(params, lr=lr) if self.sgd else real_adamw(params, lr=lr,
                                                                              weight_decay=weight_decay, fused=fused)

        def save(*args, **kwargs):
            self.saves += 1
            return real_save(*args, **kwargs)

        setattr_(dreambooth, "_draw_batch", draw)
        setattr_(torch.optim, "AdamW", optimizer)
        setattr_(dreambooth, "save_checkpoint", save)

    def result(self, ckpts=None) -> dict:
        return {"draws": self.draws, "start": self.start, "end": [p.detach().clone() for p in self.params],
                "saves": self.saves, "ckpts": ckpts}


class _Interrupt(Exception):
    pass


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """One rank: an SGD run, then an interrupted + resumed LoRA run and a straight one."""
    from db3d.core.config import BackboneConfig
    from db3d.models.backbones import build_backbone

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    root = Path(root)
    out: dict = {}
    try:
        bb = build_backbone(BackboneConfig(kind="tiny-sd", seed=0, sample_steps=4))
        images = _images()
        real = (dreambooth._draw_batch, torch.optim.AdamW, dreambooth.save_checkpoint)

        def run(name, cfg, steps, sgd=False, callback=None, cls=None) -> dict:
            spy = _Spy(sgd)
            spy.install(setattr)
            try:
                ckpts = dreambooth.train_dreambooth(bb, DreamBoothConfig(**cfg), images, "a sks toy", root / name,
                                                    steps, seed=0, key=name, class_imgs=cls, class_prompt="a toy",
                                                    callback=callback)
            finally:
                dreambooth._draw_batch, torch.optim.AdamW, dreambooth.save_checkpoint = real
            return spy.result(ckpts)

        # 1. two SGD steps of batch 1 per rank
        out["sgd"] = run("sgd", SGD, [2], sgd=True)
        # 2. LoRA + prior: interrupted at step 3 (after the state of step 2), resumed; and straight
        for r in range(world):  # class images: rank 0 samples them, then the others read the cache
            if r == rank:
                cls = class_images(bb, "a toy", 2, seed=0, cache_dir=root / "cache")
            dist.barrier()

        def stop(step, inst, prior):
            if step == 3:
                raise _Interrupt

        for name, callback in (("lora", stop), ("lora", None), ("straight", None)):
            torch.manual_seed(1234 + rank)  # LoRA's init differs per rank: only the broadcast makes it agree
            try:
                out[name] = run(name, LORA, [2, 4], callback=callback, cls=cls)
            except _Interrupt:
                pass
        out["world"] = rank_and_world()
        # 3. data_parallel over parameters that the forward uses through another module, one unused
        used, unused = torch.nn.Parameter(torch.ones(1, 3)), torch.nn.Parameter(torch.ones(2))
        layer = torch.nn.Linear(3, 1, bias=False)
        layer.weight = used
        model = data_parallel([used, unused], lambda x: layer(x).sum())
        model(torch.full((1, 3), float(rank + 1))).backward()  # this rank's gradient: rank + 1
        out["grads"] = (used.grad.clone(), unused.grad)
    finally:
        dist.destroy_process_group()
    (root / f"rank{rank}.pkl").write_bytes(pickle.dumps(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(root: Path, timeout: float = 600) -> list[dict]:
    """Run _worker on WORLD ranks; end them (by their own handles) if they hang."""
    ctx = mp.spawn(_worker, args=(WORLD, _free_port(), str(root)), nprocs=WORLD, join=False)
    deadline = time.time() + timeout
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"data-parallel workers still running after {timeout}s")
    return [pickle.loads((root / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


def _replay(monkeypatch, tiny_sd, root: Path, draws: list[tuple], batch_size: int) -> _Spy:
    """One process, SGD, fed the given per-step draws instead of its own."""
    spy = _Spy(sgd=True)
    spy.install(monkeypatch.setattr)
    feed = iter(draws)
    monkeypatch.setattr(dreambooth, "_draw_batch", lambda *a, **k: next(feed))
    dreambooth.train_dreambooth(tiny_sd, DreamBoothConfig(**{**SGD, "batch_size": batch_size}), _images(),
                                "a sks toy", root, [len(draws)], seed=0, key="sgd")
    monkeypatch.undo()
    return spy


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b))
    return (num / sum(float(y.pow(2).sum()) for y in b)) ** 0.5


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("ddp"))


def test_two_ranks_step_like_one_process_on_their_combined_batch(ranks, tiny_sd, tmp_path, monkeypatch):
    r0, r1 = ranks[0]["sgd"], ranks[1]["sgd"]
    assert [r["world"] for r in ranks] == [(0, 2), (1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(r0["start"], r1["start"]))
    assert all(torch.equal(a, b) for a, b in zip(r0["end"], r1["end"]))  # one update on every rank
    assert not torch.equal(r0["draws"][0][1], r1["draws"][0][1])  # each rank drew its own noise
    # one process, batch 2 = rank 0's sample then rank 1's, step by step
    combined = [tuple(torch.cat([a, b]) for a, b in zip(d0, d1)) for d0, d1 in zip(r0["draws"], r1["draws"])]
    single = _replay(monkeypatch, tiny_sd, tmp_path / "single", combined, batch_size=2)
    ddp_delta = [e - s for e, s in zip(r0["end"], r0["start"])]
    one_delta = [e - s for e, s in zip(single.result()["end"], single.start)]
    assert all(torch.equal(a, b) for a, b in zip(single.start, r0["start"]))
    err = _rel(ddp_delta, one_delta)
    # the test can tell: rank 0's batch alone (no gradient averaging) takes a different step
    alone = _replay(monkeypatch, tiny_sd, tmp_path / "alone", r0["draws"], batch_size=1)
    err_alone = _rel([e - s for e, s in zip(alone.result()["end"], alone.start)], one_delta)
    print(f"relative step difference: 2 ranks vs 1 process {err:.2e}; rank 0 alone {err_alone:.2e}")
    assert err < 1e-3 and err_alone > 0.05


def test_ranks_agree_only_rank_0_writes_and_a_resumed_run_matches_a_straight_one(ranks, tiny_sd):
    for name in ("lora", "straight"):
        a, b = ranks[0][name], ranks[1][name]
        assert all(torch.equal(x, y) for x, y in zip(a["end"], b["end"]))
        assert a["ckpts"] == b["ckpts"] and sorted(a["ckpts"]) == [2, 4]
        assert b["saves"] == 0  # rank 1 never writes a checkpoint
    # the resumed run (steps 3-4 only, every rank's generator restored) equals the straight run
    assert ranks[0]["lora"]["saves"] == 1 and ranks[0]["straight"]["saves"] == 2
    assert len(ranks[0]["lora"]["draws"]) == 2
    for r in range(WORLD):
        assert all(torch.equal(x, y) for x, y in zip(ranks[r]["lora"]["end"], ranks[r]["straight"]["end"]))
    ckpt = ranks[0]["lora"]["ckpts"][4]
    folder = Path(ckpt.path).parent
    assert json.loads((folder / "run.json").read_text())["world_size"] == 2
    assert not (folder / dreambooth.STATE_FILE).exists()
    z, t = torch.randn(1, 4, 32, 32), torch.tensor([500])
    emb = tiny_sd.encode_prompts(["a sks toy"])
    assert not torch.allclose(dreambooth.load_dreambooth(tiny_sd, ckpt).predict_eps(z, t, emb),
                              tiny_sd.predict_eps(z, t, emb))


def test_gradients_are_the_mean_over_ranks_and_an_unused_parameter_keeps_none(ranks):
    for r in ranks:
        used, unused = r["grads"]
        assert torch.equal(used, torch.full((1, 3), 1.5)) and unused is None  # (1 + 2) / 2


def test_without_a_process_group_the_forward_is_called_as_is():
    assert rank_and_world() == (0, 1)
    p = torch.nn.Parameter(torch.ones(3))

    def forward(x):
        return (p * x).sum()

    model = data_parallel([p], forward)
    assert model is forward  # no DDP wrapper, no averaging
    model(torch.full((3,), 2.0)).backward()
    assert torch.equal(p.grad, torch.full((3,), 2.0))
