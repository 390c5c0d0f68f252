# Unit tests for broker.authz: which role may do which action on which resource.
# Covers every deny reason (unknown-action, role-not-permitted, no-relation-to-resource,
# org-not-registered), every relation (owner, consumer, offered, any), the operator (admin)
# exemption from registration, roles held together, and grants read from data.config.
package broker.authz_test

import data.broker.authz

# A registered provider reading its own dataset, offered to econ.
base := {
	"action": "dataset.read",
	"principal": {
		"iss": "broker-dev",
		"sub": "alice",
		"org": "grid",
		"roles": ["provider"],
		"registered": true,
	},
	"resource": {
		"kind": "dataset",
		"owner_org": "grid",
		"consumer_org": "econ",
		"offered_to": ["econ"],
	},
}

decide(patch) := d if {
	d := authz.decision with input as object.union(base, patch)
}

as_principal(org, roles) := {"principal": {"org": org, "roles": roles}}

# --- the baseline ----------------------------------------------------------------------------

test_base_input_is_allowed if {
	d := decide({})
	d.allow == true
	d.reasons == set()
}

test_decision_carries_the_policy_revision if {
	d := decide({}) with data.policy.revision as "rev-under-test"
	d.revision == "rev-under-test"
}

# --- unknown-action --------------------------------------------------------------------------

test_unknown_action_is_denied if {
	d := decide({"action": "dataset.delete"})
	not d.allow
	d.reasons == {"unknown-action"}
}

test_missing_action_is_denied if {
	d := authz.decision with input as json.remove(base, ["action"])
	not d.allow
	d.reasons == {"unknown-action"}
}

test_empty_input_is_denied if {
	d := authz.decision with input as {}
	not d.allow
	d.reasons == {"unknown-action"}
}

test_action_names_are_exact if {
	d := decide({"action": "Dataset.Read"})
	d.reasons == {"unknown-action"}
}

test_aggregate_queries_are_not_an_authz_action if {
	d := decide(object.union(as_principal("econ", ["consumer"]), {"action": "query.aggregate"}))
	not d.allow
	d.reasons == {"unknown-action"}
}

# --- role-not-permitted ----------------------------------------------------------------------

test_consumer_may_not_register_organisations if {
	d := decide(object.union(as_principal("econ", ["consumer"]), {"action": "org.register"}))
	not d.allow
	d.reasons == {"role-not-permitted"}
}

test_provider_may_not_accept_a_contract if {
	d := decide({"action": "contract.accept"})
	not d.allow
	d.reasons == {"role-not-permitted"}
}

test_no_roles_is_denied if {
	d := decide(as_principal("grid", []))
	not d.allow
	d.reasons == {"role-not-permitted"}
}

test_missing_roles_is_denied if {
	d := authz.decision with input as json.remove(base, ["principal/roles"])
	not d.allow
	d.reasons == {"role-not-permitted"}
}

test_only_auditors_verify_the_log_whatever_else_they_hold if {
	d := decide(object.union(as_principal("grid", ["provider", "consumer"]), {"action": "audit.verify"}))
	d.reasons == {"role-not-permitted"}
}

# A role the action does not grant reports only that: registration and relation are not judged.
test_unpermitted_role_of_unregistered_org_reports_only_the_role if {
	d := decide({
		"action": "policy.explain",
		"principal": {"org": "ghost", "roles": ["provider"], "registered": false},
	})
	d.reasons == {"role-not-permitted"}
}

# --- relations: owner ------------------------------------------------------------------------

test_owner_provider_registers_its_dataset if {
	d := decide({"action": "dataset.register"})
	d.allow
	d.reasons == set()
}

test_provider_may_not_register_a_dataset_for_another_org if {
	d := decide({"action": "dataset.register", "resource": {"owner_org": "water"}})
	not d.allow
	d.reasons == {"no-relation-to-resource"}
}

test_owner_provider_revokes_its_contract if {
	d := decide({"action": "contract.revoke"})
	d.allow
}

test_another_provider_may_not_revoke if {
	d := decide(object.union(as_principal("water", ["provider"]), {"action": "contract.revoke"}))
	d.reasons == {"no-relation-to-resource"}
}

test_owner_relation_needs_an_owner_on_the_resource if {
	d := authz.decision with input as json.remove(base, ["resource/owner_org"])
	d.reasons == {"no-relation-to-resource"}
}

test_owner_relation_needs_the_caller_org if {
	d := authz.decision with input as json.remove(base, ["principal/org"])
	d.reasons == {"no-relation-to-resource"}
}

# --- relations: consumer ---------------------------------------------------------------------

test_named_consumer_accepts_the_contract if {
	d := decide(object.union(as_principal("econ", ["consumer"]), {"action": "contract.accept"}))
	d.allow
	d.reasons == set()
}

test_other_consumer_may_not_accept_the_contract if {
	d := decide(object.union(as_principal("env", ["consumer"]), {"action": "contract.accept"}))
	not d.allow
	d.reasons == {"no-relation-to-resource"}
}

test_named_consumer_reads_the_contract if {
	d := decide(object.union(as_principal("econ", ["consumer"]), {"action": "contract.read"}))
	d.allow
}

# The consumer relation is to consumer_org, not to the datasets offered.
test_consumer_relation_is_not_the_offered_relation if {
	d := decide({
		"action": "contract.read",
		"principal": {"org": "env", "roles": ["consumer"]},
		"resource": {"consumer_org": "econ", "offered_to": ["env"]},
	})
	d.reasons == {"no-relation-to-resource"}
}

# --- relations: offered ----------------------------------------------------------------------

test_consumer_reads_a_dataset_offered_to_it if {
	d := decide(as_principal("econ", ["consumer"]))
	d.allow
	d.reasons == set()
}

test_consumer_does_not_read_a_dataset_offered_to_others if {
	d := decide(as_principal("env", ["consumer"]))
	not d.allow
	d.reasons == {"no-relation-to-resource"}
}

test_consumer_does_not_read_a_dataset_offered_to_nobody if {
	d := decide(object.union(as_principal("econ", ["consumer"]), {"resource": {"offered_to": []}}))
	d.reasons == {"no-relation-to-resource"}
}

test_consumer_does_not_read_a_dataset_without_offers if {
	input_ := json.patch(base, [
		{"op": "replace", "path": "/principal/org", "value": "econ"},
		{"op": "replace", "path": "/principal/roles", "value": ["consumer"]},
		{"op": "remove", "path": "/resource/offered_to"},
	])
	d := authz.decision with input as input_
	d.reasons == {"no-relation-to-resource"}
}

test_another_provider_does_not_read_the_dataset if {
	d := decide(as_principal("water", ["provider"]))
	d.reasons == {"no-relation-to-resource"}
}

# --- relations: any --------------------------------------------------------------------------

test_auditor_reads_any_contract if {
	d := decide(object.union(as_principal("audit", ["auditor"]), {"action": "contract.read"}))
	d.allow
	d.reasons == set()
}

test_auditor_reads_any_dataset if {
	d := decide(object.union(as_principal("audit", ["auditor"]), {"resource": {"owner_org": "water", "offered_to": []}}))
	d.allow
}

test_provider_reads_the_audit_log if {
	d := decide({"action": "audit.read", "resource": {}})
	d.allow
}

test_consumer_explains_a_query if {
	d := decide(object.union(as_principal("econ", ["consumer"]), {"action": "policy.explain", "resource": {"kind": "query"}}))
	d.allow
}

test_any_relation_needs_no_resource if {
	d := authz.decision with input as json.patch(base, [
		{"op": "replace", "path": "/action", "value": "audit.verify"},
		{"op": "replace", "path": "/principal/roles", "value": ["auditor"]},
		{"op": "remove", "path": "/resource"},
	])
	d.allow
}

# --- several roles ---------------------------------------------------------------------------

# A relation held through any one permitted role is enough.
test_relation_of_any_held_role_suffices if {
	d := decide(as_principal("econ", ["provider", "consumer"]))
	d.allow
	d.reasons == set()
}

test_no_held_role_has_the_relation if {
	d := decide(as_principal("env", ["provider", "consumer"]))
	d.reasons == {"no-relation-to-resource"}
}

# --- org-not-registered and the operator exemption -------------------------------------------

test_unregistered_org_is_denied if {
	d := decide({"principal": {"registered": false}})
	not d.allow
	d.reasons == {"org-not-registered"}
}

test_missing_registration_is_denied if {
	d := authz.decision with input as json.remove(base, ["principal/registered"])
	not d.allow
	d.reasons == {"org-not-registered"}
}

test_registered_must_be_true_not_truthy if {
	d := decide({"principal": {"registered": "true"}})
	d.reasons == {"org-not-registered"}
}

test_unregistered_org_without_relation_gets_both_reasons if {
	d := decide({"principal": {"org": "ghost", "registered": false}})
	d.reasons == {"no-relation-to-resource", "org-not-registered"}
}

test_unregistered_auditor_is_denied if {
	d := decide({
		"action": "audit.verify",
		"principal": {"org": "ghost", "roles": ["auditor"], "registered": false},
	})
	d.reasons == {"org-not-registered"}
}

test_unregistered_consumer_may_not_read_the_directory if {
	d := decide({"action": "org.read", "principal": {"roles": ["consumer"], "registered": false}})
	d.reasons == {"org-not-registered"}
}

test_admin_registers_an_organisation_without_one_of_its_own if {
	d := decide({
		"action": "org.register",
		"principal": {"org": "op", "roles": ["admin"], "registered": false},
		"resource": {},
	})
	d.allow
	d.reasons == set()
}

test_admin_reads_the_directory_unregistered if {
	d := authz.decision with input as json.patch(base, [
		{"op": "replace", "path": "/action", "value": "org.read"},
		{"op": "replace", "path": "/principal/roles", "value": ["admin"]},
		{"op": "remove", "path": "/principal/registered"},
	])
	d.allow
}

test_admin_exemption_holds_alongside_other_roles if {
	d := decide({"principal": {"org": "op", "roles": ["consumer", "admin"], "registered": false}})
	d.allow
}

# The exemption is the operator's grant, not the admin role: an admin acting through another
# role on an action with no admin grant must belong to a registered organisation.
test_admin_exemption_needs_an_admin_grant_for_the_action if {
	d := decide({
		"action": "dataset.register",
		"principal": {"roles": ["admin", "provider"], "registered": false},
	})
	not d.allow
	d.reasons == {"org-not-registered"}
}

test_admin_without_a_grant_is_not_permitted if {
	d := decide({"action": "contract.offer", "principal": {"roles": ["admin"], "registered": false}})
	d.reasons == {"role-not-permitted"}
}

# --- grants come from data -------------------------------------------------------------------

test_grants_are_read_from_data if {
	grants := {"dataset.delete": {"provider": "owner"}}
	allowed := decide({"action": "dataset.delete"}) with data.config.authz.grants as grants
	allowed.allow
	unknown := decide({}) with data.config.authz.grants as grants
	unknown.reasons == {"unknown-action"}
}

test_a_relation_the_policy_does_not_know_never_holds if {
	d := decide({}) with data.config.authz.grants as {"dataset.read": {"provider": "neighbour"}}
	not d.allow
	d.reasons == {"no-relation-to-resource"}
}

test_admin_exemption_follows_the_grants_in_data if {
	grants := {"dataset.read": {"provider": "owner", "admin": "owner"}}
	d := decide({"principal": {"roles": ["admin"], "registered": false}}) with data.config.authz.grants as grants
	d.allow
	granted_away := decide({"principal": {"roles": ["admin"], "registered": false}}) with data.config.authz.grants as {"dataset.read": {"provider": "owner"}}
	granted_away.reasons == {"role-not-permitted"}
}

# --- audit proofs and checkpoints ------------------------------------------------------------

test_consumer_proves_its_own_entry if {
	d := decide(object.union(as_principal("econ", ["consumer"]), {"action": "audit.proof", "resource": {"kind": "audit-entry", "owner_org": "grid", "actor_org": "econ"}}))
	d.allow
}

test_consumer_cannot_prove_another_orgs_entry if {
	d := decide(object.union(as_principal("econ", ["consumer"]), {"action": "audit.proof", "resource": {"kind": "audit-entry", "owner_org": "grid", "actor_org": "water"}}))
	not d.allow
	d.reasons == {"no-relation-to-resource"}
}

test_provider_proves_entries_about_its_datasets_only if {
	mine := decide({"action": "audit.proof", "resource": {"kind": "audit-entry", "owner_org": "grid", "actor_org": "econ"}})
	mine.allow
	theirs := decide({"action": "audit.proof", "resource": {"kind": "audit-entry", "owner_org": "water", "actor_org": "econ"}})
	not theirs.allow
}

test_auditor_proves_any_entry if {
	d := decide(object.union(as_principal("audit", ["auditor"]), {"action": "audit.proof", "resource": {"kind": "audit-entry", "owner_org": null, "actor_org": "admin"}}))
	d.allow
}

test_every_role_but_admin_reads_checkpoints if {
	every roles in [["consumer"], ["provider"], ["auditor"]] {
		decide(object.union(as_principal("econ", roles), {"action": "audit.checkpoints", "resource": {"kind": "audit-log"}})).allow
	}
	not decide(object.union(as_principal("ops", ["admin"]), {"action": "audit.checkpoints", "resource": {"kind": "audit-log"}})).allow
}
