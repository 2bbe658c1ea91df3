"""The samples' token ids from an attnprobe trace file (its ids.<s> tensors),
for the Python benchmarks that run transformers on attnprobe's samples."""
from safetensors import safe_open


def load_ids(path):
    with safe_open(path, "pt") as f:
        names = sorted((k for k in f.keys() if k.startswith("ids.")), key=lambda k: int(k[4:]))
        return [f.get_tensor(k).long() for k in names]
