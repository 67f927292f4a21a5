from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_pipelines.merkle import proofs, root_of, verify_proof


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=40, unique=True))
def test_every_proof_verifies_and_a_changed_record_does_not(ids):
    records = [{"match_id": i, "match_type": "exact", "left_entry_ids": [i], "right_entry_ids": []} for i in ids]
    root, ps = proofs(records)
    assert root == root_of(list(reversed(records)))  # order of records does not matter
    by_id = {r["match_id"]: r for r in records}
    for p in ps:
        assert verify_proof(by_id[p["record_id"]], p["proof"], root)
        assert not verify_proof(by_id[p["record_id"]] | {"match_type": "tolerant"}, p["proof"], root)
