"""torchkeep's benchmark suite: ``python -m benchmarks`` (``make bench``).

Contenders: torch.save/torch.load (plain and mmap), safetensors save_file/load_file,
torchkeep (tk.save, tk.load, tk.load_into, tk.inspect, Checkpointer) and the raw I/O limit.
Workloads: a transformer-like state dict (~1 GiB), many small tensors, a training state
with AdamW moments. Results go to ``benchmarks/results/``.
"""
