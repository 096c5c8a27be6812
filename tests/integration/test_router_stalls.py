"""A router never waits on a sender or a gateway without saying so.

An instance in progress for longer than ``--stall-warning`` is logged with
the association's state -- whom it waits on, for what, the bytes received
and forwarded, the last PDU read and written -- so a stall is diagnosed
from one log line; a gateway that stays silent is answered 0xA702 before
the sender's own DIMSE timeout would abort the association.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from gatewaypool_local import scu
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_bytes

RouterFactory = Callable[..., RouterProcess]
StudyFactory = Callable[..., list[Study]]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _send_one(router: RouterProcess, path: Path, *, timeout: float = 30.0) -> int | None:
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        with scu.open_association(
            router.host,
            router.port,
            contexts=[(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)],
            called_ae=router.ae_title,
            timeout=timeout,
        ) as assoc:
            response = scu.store(assoc, path)
            return int(response.Status) if "Status" in response else None
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def test_a_slow_gateway_is_logged_while_the_instance_waits(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    slow = PynetdicomSink(tmp_path / "slow", ae_title="SLOW", delay=3.0)
    [study] = ct_studies(1, instances=1)
    size = len(dataset_bytes(study.files[0]))
    with slow:
        router = start_router([slow], extra_args=["--stall-warning", "1"])
        assert _send_one(router, study.files[0]) == 0
    [line, *_] = router.events("instance.overdue")
    assert line["waiting_on"] == "gateway"
    assert line["waiting_for"] == "C-STORE-RSP"
    assert line["gateway"] == "gw-0"
    assert line["sop_instance_uid"] == study.sop_instance_uids[0]
    assert line["received_bytes"] == line["forwarded_bytes"] == size
    assert line["last_written"] == "data set fragment to gateway"
    assert line["seconds"] >= 1
    assert router.metric("gatewaypool_router_overdue_instances_total") == 1


def test_a_sender_that_stops_mid_instance_is_logged(
    start_router: RouterFactory, ct_studies: StudyFactory, pynetdicom_gateway: PynetdicomSink
) -> None:
    [study] = ct_studies(1, instances=1, rows=128, columns=128)
    router = start_router([pynetdicom_gateway], extra_args=["--stall-warning", "1"])
    data = dataset_bytes(study.files[0])
    with scu.open_association(
        router.host,
        router.port,
        contexts=[(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)],
        called_ae=router.ae_title,
    ) as assoc:
        # A modality that hangs half way through an instance: the command and
        # the first fragments of the data set, then nothing.
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = CT_IMAGE_STORAGE
        request.AffectedSOPInstanceUID = study.sop_instance_uids[0]
        request.Priority = 2
        request.DataSet = io.BytesIO(data)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        [context_id] = [
            cx.context_id
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == CT_IMAGE_STORAGE
        ]
        fragments = list(message.encode_msg(context_id, 16384))
        sent = 0
        for primitive in fragments[: len(fragments) // 2]:
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            assoc.dul.socket.socket.sendall(pdu.encode())
            sent += sum(len(item[1]) - 1 for item in primitive.presentation_data_value_list)
        wait_until(
            lambda: bool(router.events("instance.overdue")),
            timeout=20,
            what="the stalled instance logged",
        )
        assoc.abort()
    [line, *_] = router.events("instance.overdue")
    assert line["waiting_on"] == "sender"
    assert line["waiting_for"] == "data set fragment"
    assert line["last_read"] == "P-DATA-TF"
    # The command set's bytes are not data set bytes.
    command_bytes = len(fragments[0].presentation_data_value_list[0][1]) - 1
    assert line["received_bytes"] == sent - command_bytes
    assert line["forwarded_bytes"] == line["received_bytes"]
    wait_until(
        lambda: bool(router.events("association.aborted")),
        timeout=10,
        what="the abort logged",
    )
    [ended] = router.events("association.aborted")
    assert ended["waiting_on"] == "sender"
    assert ended["last_read"] == "A-ABORT"
    assert pynetdicom_gateway.received_count() == 0


def test_a_silent_gateway_is_answered_before_the_senders_timeout(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    # The same ordering as the defaults (router 20 s, pynetdicom 30 s), scaled down.
    silent = PynetdicomSink(tmp_path / "silent", ae_title="SILENT", delay=60.0)
    [study] = ct_studies(1, instances=1)
    with silent:
        router = start_router([silent], extra_args=["--gateway-timeout", "2"])
        result: list[int | None] = []
        sender = threading.Thread(
            target=lambda: result.append(_send_one(router, study.files[0], timeout=10))
        )
        sender.start()
        sender.join(timeout=30)
    assert result == [0xA702]
    [failed] = router.events("instance.failed")
    assert failed["status_name"] == "GATEWAY_TIMEOUT"
