"""Draw docs/img/degradation.png: a synthetic clip's frame, clean vs second-order vs flow-based.

Run from the repository root: `python docs/img/degradation_figure.py` (CPU, a few seconds).
Top row: whole frames; bottom row: the same crop around the moving objects, enlarged.
"""

from pathlib import Path

import cv2
import numpy as np

from gvr.degrade.flow import degrade_video as flow_degrade
from gvr.degrade.second_order import degrade_video as second_order_degrade

H, W, T, FRAME, SEED = 432, 768, 9, 6, 0
LR_SIZE = (144, 256)
CROP = np.s_[120:336, 200:584]  # (216, 384) around the moving objects at FRAME
OUT = Path(__file__).with_name("degradation.png")


def scene(rng: np.random.Generator) -> np.ndarray:
    """Static textured background; a patterned disc and a striped card moving fast in opposite directions."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bg = np.stack([110 + 50 * np.sin(xx / 41), 120 + 45 * np.cos(yy / 29 + xx / 97), 130 + 40 * np.sin((xx + yy) / 61)], -1)
    bg += cv2.GaussianBlur(rng.standard_normal((H, W, 3)).astype(np.float32) * 40, (0, 0), 1.5)
    frames = []
    for i in range(T):
        f = bg.copy()
        cx, cy = 220 + 22 * i, 230 + int(12 * np.sin(i / 2))
        cv2.circle(f, (cx, cy), 70, (235, 120, 40), -1)
        for r in range(10, 70, 14):
            cv2.circle(f, (cx, cy), r, (250, 230, 90), 3)
        x0 = 560 - 16 * i
        cv2.rectangle(f, (x0, 120), (x0 + 110, 280), (40, 80, 220), -1)
        for y in range(126, 280, 12):
            cv2.line(f, (x0, y), (x0 + 110, y), (240, 240, 255), 3)
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(frames)


def label(img: np.ndarray, text: str) -> np.ndarray:
    """The image with a caption bar on top."""
    bar = np.full((24, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, img])


def main() -> None:
    clip = scene(np.random.default_rng(SEED))
    so = second_order_degrade(clip, LR_SIZE, np.random.default_rng(SEED))
    fl = flow_degrade(clip, np.random.default_rng(SEED))
    frames = {"clean HR": clip[FRAME],
              f"second-order ({LR_SIZE[1]}x{LR_SIZE[0]}, nearest up)": cv2.resize(so[FRAME], (W, H), interpolation=cv2.INTER_NEAREST),
              "flow-based (blending + motion blur)": fl[FRAME]}
    top = [label(cv2.resize(f, (W // 2, H // 2), interpolation=cv2.INTER_AREA), name) for name, f in frames.items()]
    bottom = [label(f[CROP], "crop") for f in frames.values()]
    grid = np.vstack([np.hstack(top), np.hstack(bottom)])
    cv2.imwrite(str(OUT), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
