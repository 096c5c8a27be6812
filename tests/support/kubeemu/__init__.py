"""The API server's write semantics as pure functions: the oracle of the drift property test.

What is left of the project's Kubernetes API emulator, now that every
operator test and the handover benchmark run on the real control plane
(:mod:`support.realcluster`). It has no server: given an object and the
live one, it says what the API server would store. Imported from the
module that defines each name:

- server-side apply (:func:`.apply.apply`): the applied configuration merged
  into the live object as structured-merge-diff merges it, list items by
  their list-map keys (with the server's key defaults), set lists unioned,
  untyped lists and atomic maps replaced; ``metadata.managedFields``
  (``FieldsV1``, :mod:`.fieldpath`) kept per manager; conflicts with other
  managers (409, naming manager and field, :class:`.errors.ApiError`) unless
  forced; what the manager applied before and leaves out now removed;
- what the server does to every written object of a built-in kind
  (:mod:`.defaults`): the ``SetDefaults_*`` defaults of what GatewayPool's
  children meet, ``""`` dropped from optional (``omitempty``) strings,
  quantities in canonical form;
- a list-map key given twice, worded as the server's 500 words it
  (:func:`.fieldpath.duplicate_entries`);
- how each field merges, from the real OpenAPI schemas shipped in
  ``kubernetes-validate`` or a CRD's ``openAPIV3Schema`` (:mod:`.schemas`).

Why it remains: ``tests/unit/operator/test_operator_drift.py`` checks, for
hypothesis-generated pairs of specs and every child of each, that the
operator's local drift decision says "no change" exactly when applying the
new children would leave the stored objects as they are. That takes
thousands of applies in seconds, which a real API server cannot give on
demand (each apply a round trip through admission and etcd: minutes). The
cases that matter also run against the real server, in
``tests/e2e/test_cluster_writes.py``; ``tests/unit/operator/test_kubeemu_apply.py``
pins the behaviours of the real server this oracle must share.

What it does not model: conflicts are computed after defaulting and
quantity canonicalization (a real server compares the applied text, so
``1000m`` against another manager's ``1`` conflicts there, not here); no
unions, no version conversion, no validation, no other write verbs (create,
update, patches) and so no ``Update`` entries of its own.
"""
