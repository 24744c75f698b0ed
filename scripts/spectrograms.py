"""Plot log-mel spectrograms of the same validation clip from real audio and each model.

    python scripts/spectrograms.py demo/samples --clip clip0 --out spectrograms.png

Reads <samples>/<model>/<clip>.wav for every model folder (real first) written by `wavflow demo`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from wavflow.audio import log_mel  # noqa: E402
from wavflow.config import FeatureConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", type=Path, help="folder of <model>/<clip>.wav")
    parser.add_argument("--clip", default="clip0", help="clip name without .wav (default clip0)")
    parser.add_argument("--out", type=Path, default=Path("spectrograms.png"), help="PNG to write")
    args = parser.parse_args()
    models = sorted(p.name for p in args.samples.iterdir() if (p / f"{args.clip}.wav").is_file())
    models = ["real"] + [m for m in models if m != "real"]
    figure, axes = plt.subplots(len(models), 1, figsize=(9, 2.2 * len(models)), sharex=True)
    for axis, model in zip(axes, models):
        audio, rate = sf.read(args.samples / model / f"{args.clip}.wav", dtype="float32")
        features = FeatureConfig(
            sample_rate=rate, n_fft=1024, hop_length=128, win_length=1024, n_mels=128, fmax=rate / 2
        )
        mel = log_mel(torch.from_numpy(audio)[None], features)[0]
        axis.imshow(mel, origin="lower", aspect="auto", vmin=float(mel.max()) - 10)
        axis.set_ylabel(model)
    axes[-1].set_xlabel("frame (8 ms)")
    figure.suptitle(f"log-mel spectrograms of {args.clip}")
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
