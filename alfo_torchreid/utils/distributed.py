"""Training on several processes: ``torch.distributed`` under ``torchrun`` (docs/distributed.md).

``torchrun`` starts one process per device and tells each, in environment
variables, who it is (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``), where the
others are (``MASTER_ADDR``, ``MASTER_PORT``) and how often the job was
restarted (``TORCHELASTIC_RESTART_COUNT``). This module reads them and holds
what the run and the engine need from ``torch.distributed``: the process
group (NCCL on CUDA, gloo on the CPU), each process's device, the
``DistributedDataParallel`` wrapper, and the few collectives of a run (sums
for the vote and the logged losses, the gathering of features for evaluation,
results and random-generator states handed between processes).

Without torchrun's environment nothing here starts a process group, and every
helper answers as the single process of a plain run does: rank 0 of 1, the
main process, collectives that return their input.
"""
import contextlib
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from alfo_torchreid.utils.errors import ConfigError, TrainingError

# -- torchrun's environment --------------------------------------------------

def launched():
    """Whether this process was started by torchrun (or with its environment)."""
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def environment_world_size():
    """``WORLD_SIZE`` of torchrun's environment: the processes of the job (1 without torchrun)."""
    return int(os.environ['WORLD_SIZE']) if launched() else 1


def restart_count():
    """How often torchrun restarted this job after a failure (``--max-restarts``)."""
    return int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0))


def restarted():
    """Whether torchrun restarted this job after a failure."""
    return restart_count() > 0


@contextlib.contextmanager
def process_group(use_gpu):
    """Joins the job's process group for the ``with`` block: NCCL with each
    process on GPU ``LOCAL_RANK`` when ``use_gpu``, gloo on the CPU otherwise.
    Without torchrun's environment, does nothing.

    Raises:
        ConfigError: ``LOCAL_RANK`` names a GPU this machine does not have.
    """
    if not launched():
        yield
        return
    if use_gpu:
        local_rank, count = int(os.environ.get('LOCAL_RANK', 0)), torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f'LOCAL_RANK {local_rank} has no GPU: this machine has {count}; start at most '
                f'{count} processes per machine (torchrun --nproc_per_node {count})')
        torch.cuda.set_device(local_rank)
    store, process_rank, processes = next(dist.rendezvous('env://'))
    # torchrun's agent serves one store for every attempt of a job: without keys of
    # their own, the processes of a restarted job would read the addresses that the
    # previous attempt's processes published, and fail to connect to the dead ones
    store = dist.PrefixStore(f'alfo-attempt-{restart_count()}', store)
    dist.init_process_group('nccl' if use_gpu else 'gloo', store=store, rank=process_rank,
                            world_size=processes)
    try:
        with peer_loss_as_error():
            yield
    finally:
        dist.destroy_process_group()


# what gloo's and NCCL's collectives say when another process of the job has died
PEER_LOST = ('Connection reset by peer', 'Connection closed by peer', 'Broken pipe')


@contextlib.contextmanager
def peer_loss_as_error():
    """Turns the error of a collective whose peer died (the other process
    was killed; torchrun restarts the job under ``--max-restarts``) into a
    one-line TrainingError instead of a traceback."""
    try:
        yield
    except RuntimeError as exc:
        lost = next((text for text in PEER_LOST if text in str(exc)), None)
        if lost is None:
            raise
        raise TrainingError(
            f'another process of the job ended ({lost}): this one stops too; torchrun '
            'restarts the job from model/latest.pth.tar when --max-restarts allows') from None


def is_initialized():
    """Whether this process is in a process group (a torchrun job)."""
    return dist.is_available() and dist.is_initialized()


def rank():
    """This process's rank in the job (0 in a plain run)."""
    return dist.get_rank() if is_initialized() else 0


def world_size():
    """Processes in the job (1 in a plain run)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process():
    """Whether this process logs and writes the run's files (rank 0)."""
    return rank() == 0


def barrier():
    """Waits until every process gets here (nothing in a plain run)."""
    if is_initialized():
        dist.barrier()


# -- the model -------------------------------------------------------------

def wrap(model, use_gpu, sync_bn=False, find_unused_parameters=False):
    """``model`` (already on this process's device) in ``DistributedDataParallel``.

    DDP starts every process from rank 0's weights and buffers, averages the
    gradients over the processes in ``backward()``, and hands rank 0's buffers
    (BatchNorm statistics, ALFO's vote tally) to all at each training forward.

    Args:
        sync_bn: BatchNorm layers become ``SyncBatchNorm`` (statistics over
            the global batch; CUDA only), when there are several processes.
        find_unused_parameters: for steps where some parameters get no
            gradient (``train.fixbase_epoch``: the frozen base layers).
    """
    if sync_bn and world_size() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [torch.cuda.current_device()] if use_gpu else None
    return DistributedDataParallel(model, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def broadcast_buffers(module):
    """Copies rank 0's buffers (BatchNorm statistics) into every process's ``module``."""
    if is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


# -- collectives -----------------------------------------------------------

def sum_over_ranks(tensor):
    """The sum of ``tensor`` over the processes (a new tensor, on its device)."""
    total = tensor.clone()
    if is_initialized():
        dist.all_reduce(total)
    return total


def mean_over_ranks(values):
    """``{name: float}`` -> the mean of each value over the processes (same
    names, in the same order)."""
    if not is_initialized():
        return values
    names = sorted(values)  # the same order in every process
    device = torch.device('cuda', torch.cuda.current_device()) \
        if dist.get_backend() == 'nccl' else torch.device('cpu')
    total = sum_over_ranks(torch.tensor([float(values[n]) for n in names], dtype=torch.float64,
                                        device=device))
    means = dict(zip(names, total.tolist()))
    return {n: means[n] / world_size() for n in values}  # in the order given: the log's columns


def job_line(global_batch):
    """The first line of a torchrun job's log: ``'torchrun job: 2 processes,
    backend gloo; train.batch_size 16 global = 2 x 8 per process'``."""
    processes = world_size()
    return (f'torchrun job: {processes} process{"es" * (processes != 1)}, backend '
            f'{dist.get_backend()}; train.batch_size {global_batch} global = {processes} x '
            f'{global_batch // processes} per process')


def gather_to_main(obj):
    """Every process's ``obj`` (picklable), in rank order, on the main process;
    None on the others. A plain run gets ``[obj]``."""
    if not is_initialized():
        return [obj]
    gathered = [None] * world_size() if is_main_process() else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj):
    """The main process's ``obj`` (picklable), on every process."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- data ------------------------------------------------------------------

def shard(loader):
    """A loader over this process's contiguous share of ``loader``'s dataset,
    in order, with the same batch size and workers: the shares of all
    processes, concatenated in rank order, are the dataset in its order."""
    n, r, w = len(loader.dataset), rank(), world_size()
    share = Subset(loader.dataset, range(r * n // w, (r + 1) * n // w))
    return DataLoader(share, batch_size=loader.batch_size, shuffle=False,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)
