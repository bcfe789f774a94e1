"""schemathesis hooks of tests/openapi.rs.

A tus PATCH body (docs/media.md) is raw bytes with the media type the tus protocol names,
application/offset+octet-stream, which schemathesis does not know: generated bodies go on
the wire as they do for application/octet-stream.
"""

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
