"""The GatewayPool study router.

A DICOM Storage SCP that streams every instance to the gateway owning the
bucket of its StudyInstanceUID, and acknowledges only what that gateway
acknowledged.
"""
