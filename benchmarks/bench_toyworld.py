"""ToyWorld render throughput, printed (not a timed test): 1,000 renders at 32x32, batched by object.

    python benchmarks/bench_toyworld.py
"""

from __future__ import annotations

import time

import torch

from db3d.cameras import sample_random_cameras
from db3d.toyworld import enumerate_world, render_object


def main() -> None:
    world = enumerate_world(120, seed=0)
    cams = sample_random_cameras(100, 32, distance_range=(1.8, 2.4), fov_range=(40.0, 50.0),
                                 generator=torch.Generator().manual_seed(0))
    render_object(world[0], cams[:2])  # warm-up
    for supersample in (1, 2):
        start = time.perf_counter()
        for obj in world[:10]:
            render_object(obj, cams, supersample=supersample)
        seconds = time.perf_counter() - start
        print(f"1000 ToyWorld renders at 32x32, supersample {supersample}: {seconds:.2f} s "
              f"({1000 / seconds:.0f} renders/s, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
