"""The volumes of a kicked-out node: when its ReadWriteOnce volumes are free to attach elsewhere.

The out-of-service taint exists for volumes. A dead node's pods leaving is not the end
of a recovery: their ReadWriteOnce volumes stay attached to the dead node (its
VolumeAttachments stay) until the attach-detach controller detaches them, which it does
without waiting for an unmount only under the taint. Only then can a replacement pod's
volume be attached on another node. So "recovered" is: no VolumeAttachment of the node
is left from before its kickout. A VolumeAttachment created after the kickout (a pod that
tolerates the taint, a DaemonSet) is not the kickout's business.

The attach-detach controller's records are the VolumeAttachments themselves: one per
(volume, node), deleted once the CSI driver has detached the volume. A VolumeAttachment
with a deletionTimestamp is still attached (the driver has not confirmed the detach).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import attrs

from asklepios.core.records import KickoutRecord


@attrs.frozen
class Attachment:
    """One storage.k8s.io/v1 VolumeAttachment, reduced to what the decision reads."""

    name: str
    node: str  # spec.nodeName
    volume: str = ""  # spec.source.persistentVolumeName ("" for an inline volume)
    attacher: str = ""  # spec.attacher: the CSI driver
    attached: bool = False  # status.attached
    created: datetime | None = None  # metadata.creationTimestamp
    deleting_since: datetime | None = None  # metadata.deletionTimestamp

    def from_before(self, record: KickoutRecord) -> bool:
        """Created before (or in the same second as) the kickout; unknown counts as before."""
        return self.created is None or self.created <= record.at


def left_from_before(attachments: Iterable[Attachment], node: str, record: KickoutRecord) -> list[Attachment]:
    """The VolumeAttachments of ``node`` from before its kickout that still exist, by name."""
    return sorted((a for a in attachments if a.node == node and a.from_before(record)), key=lambda a: a.name)


@attrs.frozen
class NodeVolumes:
    """What the VolumeAttachment watch says about one kicked-out node, reduced for the decision."""

    synced: bool
    left: tuple[str, ...] = ()  # names of its pre-kickout VolumeAttachments still there
    volumes: tuple[str, ...] = ()  # their PVs (what an operator waits for)

    @classmethod
    def of(cls, attachments: Iterable[Attachment] | None, node: str, record: KickoutRecord) -> NodeVolumes:
        """``attachments`` None: the watch has not listed yet (nothing can be said)."""
        if attachments is None:
            return cls(synced=False)
        left = left_from_before(attachments, node, record)
        return cls(
            synced=True,
            left=tuple(a.name for a in left),
            volumes=tuple(sorted({a.volume for a in left if a.volume})),
        )

    @property
    def released(self) -> bool:
        """True once the watch has listed and no pre-kickout VolumeAttachment of the node is left."""
        return self.synced and not self.left
