"""Two real JAX processes (CPU, jax.distributed): each host reads its slice, and the global batch they build
together holds exactly the examples (with the same augmentation) that a single host would have produced."""
import textwrap

from data_pipelines.pipeline import builtin
from multihost import run_two_hosts

HOST_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np

    port, pid, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from jax.experimental import multihost_utils
    from data_pipelines.pipeline import loader, mixture, transforms
    from data_pipelines.records import sources

    B = 4  # global batch
    opts = transforms.ClipOptions(num_frames=4, size=16, crop="rrc")

    def dataset(process_index, process_count):
        src = sources.open_source(f"{data_dir}/kinetics")
        per_task = {"kinetics": loader.task_dataset(src, transforms.make_transform("kinetics", opts), seed=7,
                    host_batch_size=B // process_count, process_index=process_index,
                    process_count=process_count)}
        return loader.mixed_dataset(per_task, ("kinetics",))

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    it = loader.GlobalBatchIterator(loader.BatchIterator(dataset(jax.process_index(), jax.process_count())),
                                    mesh, ("data",))
    single_host = dataset(0, 1)
    order = np.array([0, 2, 1, 3])  # host 0 holds global elements 0, 2; host 1 holds 1, 3
    for step in range(3):
        batch = next(it)
        assert batch["video"].shape == (B, 4, 16, 16, 3), batch["video"].shape
        video = multihost_utils.process_allgather(batch["video"], tiled=True)
        label = multihost_utils.process_allgather(batch["label"], tiled=True)
        want = single_host[step]
        np.testing.assert_array_equal(video, want["video"][order])
        np.testing.assert_array_equal(label, want["label"][order])
        assert len(set(batch["video_id"])) == B // 2  # host-local strings: this host's rows only
    print("HOST_OK", pid)
    """
)



def test_two_processes_build_the_single_host_global_batch(tmp_path):
    dirs = builtin.build_builtin_dataset(tmp_path / "data", videos_per_task=8, tasks=("kinetics",))
    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT)
    run_two_hosts(script, [dirs["kinetics"].parent], timeout=120)  # each host checks its batch itself
