"""VolumeAttachments (storage.k8s.io/v1): parsed into :class:`asklepios.core.volumes.Attachment`.

Asklepios only reads them (RBAC: ``volumeattachments`` list and watch); the attach-detach
controller and the CSI attacher write them.
"""

from __future__ import annotations

import sys

from asklepios.core.records import parse_time
from asklepios.core.volumes import Attachment
from asklepios.kube.client import JSON

VOLUME_ATTACHMENTS_PATH = "/apis/storage.k8s.io/v1/volumeattachments"


def parse_attachment(obj: JSON) -> Attachment:
    """One VolumeAttachment; KeyError/TypeError on one without a name or nodeName (skipped by the reflector)."""
    meta, spec = obj["metadata"], obj["spec"]
    node = spec["nodeName"]
    if not isinstance(node, str) or not node:
        raise ValueError(f"VolumeAttachment {meta.get('name')} has no spec.nodeName")
    status = obj.get("status") or {}
    return Attachment(
        name=str(meta["name"]),
        node=sys.intern(node),
        volume=str((spec.get("source") or {}).get("persistentVolumeName") or ""),
        attacher=sys.intern(str(spec.get("attacher") or "")),
        attached=status.get("attached") is True,
        created=parse_time(meta.get("creationTimestamp")),
        deleting_since=parse_time(meta.get("deletionTimestamp")),
    )
