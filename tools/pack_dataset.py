#!/usr/bin/env python
"""Pack a LUPerson-T set (JSON + image folder) into the packed Arrow layout (one file).

    python tools/pack_dataset.py --annotation datasets/LUPerson-T/luperson_t.json \
        --image-dir datasets/LUPerson-T/imgs --output datasets/LUPerson-T/LUPerson_train.arrow
    # then train on it: DATASETS.LUPERSON_T.ANNOTATION LUPerson_train.arrow

The rows are the images as ``LUPersonT`` reads them from the JSON (same order, captions
stripped, empty and repeated ones dropped, every listed image checked), so the packed file gives
the same training items; the entries' ``attribute_spans`` (what the pseudo-text generator
records, read by PLIP's IAP) go into the ``attribute_spans`` column, shifted to the stripped
captions, so IAP masks the same phrases from either layout. Resumable: parts of --rows-per-part rows are written under
``<output>.parts/`` (each atomically); re-running the same command after an interruption
continues with the missing parts; different inputs or settings start over. The output is
written to a temporary file next to it and renamed when complete. Columns and the row
references items use: ``unipt_plugin/data/datasets/arrow_layout.py`` and datasets/README.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import unipt_plugin  # noqa: E402,F401  (compat shims before fastreid)
from unipt_plugin.data.datasets import DatasetFormatError  # noqa: E402
from unipt_plugin.data.datasets.arrow_layout import pack_luperson_t  # noqa: E402
from unipt_plugin.data.transforms import ImageReadError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotation", required=True,
                   help="the JSON list of {'file_path', 'captions'} (and 'attribute_spans', when recorded)")
    p.add_argument("--image-dir", required=True, help="folder the file_path of each entry is relative to")
    p.add_argument("--output", required=True, help="the .arrow file to write")
    p.add_argument("--rows-per-part", type=int, default=65536,
                   help="rows per resumable part (the work an interruption can lose; default 65536)")
    p.add_argument("--batch-mib", type=float, default=64.0,
                   help="image bytes per Arrow record batch, in MiB (default 64)")
    p.add_argument("--decode-check", action="store_true",
                   help="decode every image first and refuse corrupt ones by name (slow)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        result = pack_luperson_t(args.annotation, args.image_dir, args.output, rows_per_part=args.rows_per_part,
                                 batch_bytes=max(1, int(args.batch_mib * 2 ** 20)), decode_check=args.decode_check,
                                 progress=not args.no_progress)
    except (FileNotFoundError, ImageReadError, DatasetFormatError, ValueError, OSError) as e:
        print(f"pack_dataset: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.output}: {result.num_images} images, {result.num_captions} captions, "
          f"{result.num_bytes / 2 ** 20:.1f} MiB in {result.seconds:.1f} s"
          + (f" ({result.parts_reused} parts from an interrupted pack reused)" if result.parts_reused else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
