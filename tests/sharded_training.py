"""Real sharded training runs on CPU, for tests/test_sharded_state.py (run as a script).

  python sharded_training.py fsdp OUT    two FSDP2 ranks over gloo, then dcp.save of the
                                         sharded optimizer state (accelerate's layout)
  python sharded_training.py deepspeed OUT   DeepSpeed ZeRO-2 on one CPU rank, save_checkpoint

Each writes OUT/model (the model's folder: config and weights) and OUT/reference.safetensors:
every parameter's whole exp_avg_sq as the library itself reports it after training.
"""

import os
import socket
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

STEPS = 3


def _model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def _batch(step: int) -> torch.Tensor:
    return torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(step))


def _fsdp_rank(rank: int, world: int, out: str, port: int) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model()
    if rank == 0:
        model.save_pretrained(Path(out) / "model")
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(STEPS):
        ids = _batch(step * world + rank)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    dcp.save({"optimizer": get_optimizer_state_dict(model, opt)}, checkpoint_id=str(Path(out) / "optimizer_0"))
    full = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        save_file({n: s["exp_avg_sq"].contiguous() for n, s in full["state"].items()},
                  str(Path(out) / "reference.safetensors"))
    # Both ranks leave together: a rank that tears gloo down while its peer still writes has
    # aborted the peer ("terminate called without an active exception") on a busy 2-core box.
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp(out: str) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_rank, args=(2, out, _free_port()), nprocs=2)


def deepspeed_run(out: str) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    from deepspeed.utils import safe_get_full_optimizer_state

    model = _model()
    model.save_pretrained(Path(out) / "model")
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    for step in range(STEPS):
        ids = _batch(step)
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
    engine.save_checkpoint(str(Path(out) / "ckpt"))
    save_file({n: safe_get_full_optimizer_state(p, "exp_avg_sq").contiguous()
               for n, p in engine.module.named_parameters()}, str(Path(out) / "reference.safetensors"))


if __name__ == "__main__":
    {"fsdp": fsdp, "deepspeed": deepspeed_run}[sys.argv[1]](sys.argv[2])
