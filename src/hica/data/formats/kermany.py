"""Kermany chest X-ray file names → patient ids, so that validation can be carved per patient.

The Guangzhou pediatric chest X-rays (Kermany et al., Cell 2018) name each file after its patient:

- pneumonia: ``person<N>_<bacteria|virus>_<image>[_<k>].jpeg`` → ``person<N>``
  (``person1_bacteria_1.jpeg``, ``person1_virus_6.jpeg`` and ``person447_virus_921_1.jpeg`` → ``person1``,
  ``person1``, ``person447``);
- normal: ``[NORMAL<n>-]IM-<patient>-<image>[-<k>].jpeg`` → ``[NORMAL<n>-]IM-<patient>``
  (``IM-0115-0001.jpeg`` → ``IM-0115``, ``IM-0629-0001-0002.jpeg`` → ``IM-0629``,
  ``NORMAL2-IM-1427-0001.jpeg`` → ``NORMAL2-IM-1427``).

``IM-0629`` and ``NORMAL2-IM-0629`` are kept apart: the ``NORMAL2`` files are a separate batch whose numbers
are not known to be the same patients. On the shared copy's training split this gives 2,846 patients for
5,216 images, 1,075 of them with more than one image.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import PurePath

from hica.data.sample import Sample

log = logging.getLogger(__name__)

_PATIENT = re.compile(
    r"^(?:(?P<person>person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*"
    r"|(?P<im>(?:NORMAL\d+-)?IM-\d+)-\d+(?:-\d+)*)"
    r"\.(?:jpe?g|png)$",
    re.IGNORECASE,
)
UNPARSED = "file:"  # prefix of the group of an image whose name carries no patient id (its own group)


def kermany_patient_id(file_name: str) -> str | None:
    """The patient id in a Kermany file name (a bare name or a path), or None when it has none.

    ``person1_virus_6.jpeg`` → ``person1``; ``NORMAL2-IM-1427-0001.jpeg`` → ``NORMAL2-IM-1427``; names of
    any other shape (renamed or foreign files) → None."""
    m = _PATIENT.match(PurePath(file_name).name)
    if m is None:
        return None
    return m.group("person") or m.group("im")


def patient_groups(samples: Sequence[Sample], source: str = "the images") -> list[str]:
    """One group per sample: its Kermany patient id, or ``file:<sample id>`` (a group of its own) when its
    file name has none; the count of such names is logged once as a warning naming ``source``."""
    groups: list[str] = []
    unparsed: list[str] = []
    for s in samples:
        pid = kermany_patient_id(s.path.name if s.path is not None else s.id)
        if pid is None:
            unparsed.append(s.id)
            pid = f"{UNPARSED}{s.id}"
        groups.append(pid)
    if unparsed:
        log.warning(
            "%d file name(s) in %s carry no Kermany patient id (e.g. %s); each is its own patient group",
            len(unparsed),
            source,
            ", ".join(unparsed[:3]),
        )
    return groups
