"""The kernels of an Nsight Compute --csv log (one metric: gpu__time_duration),
in launch order: (name, grid, nanoseconds). Used by profile-*.sh."""
import csv


def kernels(path, name_len=60):
    seq, hdr = [], None
    for r in csv.reader(open(path)):
        if "Kernel Name" in r:
            hdr = r
        elif hdr and len(r) == len(hdr):
            d = dict(zip(hdr, r))
            seq.append((d["Kernel Name"][:name_len], d.get("Grid Size", ""),
                        float(d["Metric Value"].replace(",", ""))))
    return seq
