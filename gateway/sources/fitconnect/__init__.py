"""FIT-Connect subscriber: the gateway's ``fitconnect`` source (see docs/fitconnect-subscriber.md).

Modules: :mod:`.options` (configuration), :mod:`.client` (Submission API + token), :mod:`.eventlog`
(SET verification), :mod:`.checks` (pure receipt checks), :mod:`.attachments` (streaming receipt),
:mod:`.receiver` (one submission end to end), :mod:`.acks` (accept/reject SETs, 409 reconciliation),
:mod:`.callback` (HMAC callback endpoint), :mod:`.source` (polling, workers), :mod:`.plugin` (hook).
"""
