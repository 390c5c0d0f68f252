# Unit tests for broker.flow: whether an aggregate query may run under its contract, and in
# which form each field flows. Covers the caller and contract checks (role, registration,
# status, party, validity window edges, quota edges, purpose, malformed k), every per-field
# deny reason, every verdict (clear, generalize, pseudonymize, aggregate, deny) and how several
# uses of one field combine, the effective k (contract k_min raised to the touched levels'
# highest floor, compared as numbers), the dominance floors, and data-driven overrides.
package broker.flow_test

import data.broker.flow

# An active contract between provider grid and consumer econ, a dataset of enterprise
# records, and a sum of kwh by town: allowed with k 5.
base := {
	"principal": {"iss": "broker-dev", "sub": "analyst", "org": "econ", "roles": ["consumer"], "registered": true},
	"now": 1500,
	"usage": {"queries_today": 0},
	"contract": {
		"id": "c1",
		"dataset_id": "d1",
		"status": "active",
		"consumer_org": "econ",
		"provider_org": "grid",
		"valid_from": 1000,
		"valid_until": 2000,
		"max_queries_per_day": 10,
		"purposes": ["energy-planning", "industrial-policy"],
		"k_min": 5,
		"dominance": {"n": 2, "k": 85, "p": 0},
		"fields": {
			"town": "clear",
			"industry": "generalize",
			"month": "generalize",
			"name": "pseudonymize",
			"kwh": "aggregate",
			"tax": "aggregate",
			"output": "aggregate",
			"employees": "clear",
			"phone": "clear",
			"ghost": "clear",
			"owner": "plain",
		},
	},
	"dataset": {
		"id": "d1",
		"entity_field": "uscc",
		"fields": {
			"uscc": {"type": "string", "role": "entity", "sensitivity": "L2", "hierarchy": null},
			"town": {"type": "string", "role": "dimension", "sensitivity": "L1", "hierarchy": null},
			"industry": {"type": "string", "role": "dimension", "sensitivity": "L1", "hierarchy": "gbt4754"},
			"month": {"type": "date", "role": "dimension", "sensitivity": "L1", "hierarchy": null},
			"name": {"type": "string", "role": "identifier", "sensitivity": "L2", "hierarchy": null},
			"phone": {"type": "string", "role": "identifier", "sensitivity": "L3", "hierarchy": null},
			"owner": {"type": "string", "role": "quasi_identifier", "sensitivity": "L2", "hierarchy": null},
			"kwh": {"type": "number", "role": "measure", "sensitivity": "L2", "hierarchy": null},
			"employees": {"type": "integer", "role": "measure", "sensitivity": "L1", "hierarchy": null},
			"output": {"type": "number", "role": "sensitive", "sensitivity": "L3", "hierarchy": null},
			"tax": {"type": "number", "role": "sensitive", "sensitivity": "L4", "hierarchy": null},
		},
	},
	"query": {
		"purpose": "energy-planning",
		"group_by": [{"field": "town", "level": "raw"}],
		"measures": [{"fn": "sum", "fields": ["kwh"]}],
		"filters": [],
	},
}

# The decision for the base input deep-merged with patch (arrays are replaced whole).
decide(patch) := d if {
	d := flow.decision with input as object.union(base, patch)
}

# The decision for the base input with parts of its query replaced.
ask(q) := decide({"query": q})

# The decision for the base input changed by JSON patch operations.
decide_ops(ops) := d if {
	d := flow.decision with input as json.patch(base, ops)
}

dim(field, level) := {"field": field, "level": level}

filter(field, op, level) := {"field": field, "op": op, "level": level}

sum_of(field) := {"fn": "sum", "fields": [field]}

# A field is denied for exactly these reasons, and the query with it.
denied_for(d, field, reasons) if {
	not d.allow
	d.fields[field] == "deny"
	d.field_reasons[field] == reasons
}

# --- the baseline ----------------------------------------------------------------------------

test_sum_by_town_under_an_active_contract_is_allowed if {
	d := decide({})
	d.allow == true
	d.reasons == set()
	d.fields == {"town": "clear", "kwh": "aggregate"}
	d.field_reasons == {}
	d.k == 5
	d.quota_remaining == 10
	d.disclosure == {"k": 5, "dominance_n": 2, "dominance_k": 85, "p_percent": 0, "protection_percent": 10}
}

test_decision_carries_the_policy_revision if {
	d := decide({}) with data.policy.revision as "rev-under-test"
	d.revision == "rev-under-test"
}

# --- the caller ------------------------------------------------------------------------------

test_provider_cannot_query if {
	d := decide({"principal": {"roles": ["provider"]}})
	not d.allow
	d.reasons == {"role-not-permitted"}
}

test_caller_without_roles_cannot_query if {
	d := decide_ops([{"op": "remove", "path": "/principal/roles"}])
	d.reasons == {"role-not-permitted"}
}

test_consumer_among_other_roles_may_query if {
	d := decide({"principal": {"roles": ["auditor", "consumer"]}})
	d.allow
}

test_unregistered_org_cannot_query if {
	d := decide({"principal": {"registered": false}})
	not d.allow
	d.reasons == {"org-not-registered"}
}

test_registration_missing_cannot_query if {
	d := decide_ops([{"op": "remove", "path": "/principal/registered"}])
	d.reasons == {"org-not-registered"}
}

test_registered_must_be_true_not_truthy if {
	d := decide({"principal": {"registered": "yes"}})
	d.reasons == {"org-not-registered"}
}

# The operator has no exemption here: only registered consumers query.
test_admin_cannot_query if {
	d := decide({"principal": {"roles": ["admin"], "registered": false}})
	d.reasons == {"role-not-permitted", "org-not-registered"}
}

# --- the contract ----------------------------------------------------------------------------

test_no_contract_is_denied if {
	d := decide_ops([{"op": "remove", "path": "/contract"}])
	not d.allow
	d.reasons == {"no-active-contract"}
	d.k == 0
	d.quota_remaining == 0
}

test_null_contract_is_denied if {
	d := decide({"contract": null})
	d.reasons == {"no-active-contract"}
	d.k == 0
}

test_contract_of_another_type_is_denied if {
	d := decide({"contract": "c1"})
	not d.allow
	d.reasons == {"no-active-contract"}
}

test_revoked_contract_is_denied if {
	d := decide({"contract": {"status": "revoked"}})
	not d.allow
	d.reasons == {"contract-not-active"}
}

test_offered_contract_is_not_yet_usable if {
	d := decide({"contract": {"status": "offered"}})
	d.reasons == {"contract-not-active"}
}

test_contract_status_is_exact if {
	d := decide({"contract": {"status": "Active"}})
	not d.allow
	d.reasons == {"contract-not-active"}
}

test_contract_without_status_is_denied if {
	d := decide_ops([{"op": "remove", "path": "/contract/status"}])
	not d.allow
	d.reasons == {"contract-not-active"}
}

test_another_consumers_contract_is_denied if {
	d := decide({"contract": {"consumer_org": "tax-bureau"}})
	not d.allow
	d.reasons == {"consumer-not-party"}
}

test_caller_without_org_is_not_party if {
	d := decide_ops([{"op": "remove", "path": "/principal/org"}])
	d.reasons == {"consumer-not-party"}
}

# --- the validity window: [valid_from, valid_until) ------------------------------------------

test_one_second_before_valid_from_is_not_yet_valid if {
	d := decide({"now": 999})
	not d.allow
	d.reasons == {"contract-not-yet-valid"}
}

test_at_valid_from_is_allowed if {
	d := decide({"now": 1000})
	d.allow
	d.reasons == set()
}

test_one_second_before_valid_until_is_allowed if {
	d := decide({"now": 1999})
	d.allow
}

test_at_valid_until_is_expired if {
	d := decide({"now": 2000})
	not d.allow
	d.reasons == {"contract-expired"}
}

test_long_after_valid_until_is_expired if {
	d := decide({"now": 999999})
	d.reasons == {"contract-expired"}
}

test_missing_now_is_neither_started_nor_unexpired if {
	d := decide_ops([{"op": "remove", "path": "/now"}])
	not d.allow
	d.reasons == {"contract-not-yet-valid", "contract-expired"}
}

# Times are numbers: text never passes for one, however it would order.
test_now_as_text_is_denied if {
	d := decide({"now": "1500"})
	not d.allow
	d.reasons == {"contract-not-yet-valid", "contract-expired"}
}

test_valid_until_as_text_never_extends_the_window if {
	d := decide({"now": 999999, "contract": {"valid_until": "2000"}})
	not d.allow
	d.reasons == {"contract-expired"}
}

test_missing_window_is_denied if {
	d := decide_ops([
		{"op": "remove", "path": "/contract/valid_from"},
		{"op": "remove", "path": "/contract/valid_until"},
	])
	d.reasons == {"contract-not-yet-valid", "contract-expired"}
}

# --- the daily quota -------------------------------------------------------------------------

test_the_last_query_of_the_day_is_allowed if {
	d := decide({"usage": {"queries_today": 9}})
	d.allow
	d.quota_remaining == 1
}

test_quota_used_up_is_denied if {
	d := decide({"usage": {"queries_today": 10}})
	not d.allow
	d.reasons == {"daily-quota-exhausted"}
	d.quota_remaining == 0
}

test_past_the_quota_reports_a_negative_remainder if {
	d := decide({"usage": {"queries_today": 12}})
	d.reasons == {"daily-quota-exhausted"}
	d.quota_remaining == -2
}

test_missing_usage_is_denied if {
	d := decide_ops([{"op": "remove", "path": "/usage"}])
	d.reasons == {"daily-quota-exhausted"}
	d.quota_remaining == 0
}

test_usage_as_text_is_denied if {
	d := decide({"usage": {"queries_today": "0"}})
	d.reasons == {"daily-quota-exhausted"}
	d.quota_remaining == 0
}

test_quota_as_text_is_denied if {
	d := decide({"contract": {"max_queries_per_day": "10"}})
	d.reasons == {"daily-quota-exhausted"}
	d.quota_remaining == 0
}

test_a_zero_quota_allows_nothing if {
	d := decide({"contract": {"max_queries_per_day": 0}})
	d.reasons == {"daily-quota-exhausted"}
}

# --- the purpose -----------------------------------------------------------------------------

test_purpose_outside_the_contract_is_denied if {
	d := ask({"purpose": "tax-analysis"})
	not d.allow
	d.reasons == {"purpose-not-in-contract"}
}

test_purpose_outside_the_catalogue_is_denied if {
	d := ask({"purpose": "marketing"})
	d.reasons == {"purpose-not-in-contract", "purpose-unknown"}
}

test_purpose_names_are_exact if {
	d := ask({"purpose": "Energy-Planning"})
	d.reasons == {"purpose-not-in-contract", "purpose-unknown"}
}

test_missing_purpose_is_denied if {
	d := decide_ops([{"op": "remove", "path": "/query/purpose"}])
	d.reasons == {"purpose-not-in-contract", "purpose-unknown"}
}

# A purpose the parties agreed on is still refused once the catalogue drops it.
test_purpose_catalogue_is_read_from_data if {
	d := decide({}) with data.config.purposes as {"industrial-policy": "Steering industrial policy"}
	not d.allow
	d.reasons == {"purpose-unknown"}
}

# --- the effective k -------------------------------------------------------------------------

test_contract_k_above_the_floors_stays if {
	d := decide({"contract": {"k_min": 12}, "query": {"measures": [sum_of("tax")]}})
	d.allow
	d.k == 12
	d.disclosure.k == 12
}

test_contract_k_equal_to_the_floor_stays if {
	d := decide({"contract": {"k_min": 10}, "query": {"measures": [sum_of("tax")]}})
	d.k == 10
}

test_contract_k_below_the_l1_floor_is_raised if {
	d := decide({"contract": {"k_min": 2}})
	d.allow
	d.k == 3
}

test_sensitive_l4_sum_raises_k_to_its_floor if {
	d := ask({"measures": [sum_of("tax")]})
	d.allow
	d.fields == {"town": "clear", "tax": "aggregate"}
	d.k == 10
	d.disclosure.k == 10
}

test_l3_measure_raises_k_to_5 if {
	d := decide({"contract": {"k_min": 4}, "query": {"measures": [sum_of("output")]}})
	d.k == 5
}

# Floors 5 (L3) and 10 (L4): the higher as a number is 10; compared as text it would be 5.
test_floors_5_and_10_give_10 if {
	d := decide({"contract": {"k_min": 4}, "query": {"measures": [sum_of("output"), sum_of("tax")]}})
	d.allow
	d.k == 10
}

test_floors_3_and_10_give_10 if {
	d := decide({"contract": {"k_min": 4}, "query": {"measures": [sum_of("kwh"), sum_of("tax")]}})
	d.k == 10
}

test_entity_field_sensitivity_sets_the_floor if {
	d := decide({"dataset": {"fields": {"uscc": {"sensitivity": "L4"}}}})
	d.allow
	d.k == 10
}

test_a_filtered_field_counts_for_the_floor if {
	d := decide({
		"dataset": {"fields": {"town": {"sensitivity": "L4"}}},
		"query": {"group_by": [], "filters": [filter("town", "eq", "raw")]},
	})
	d.allow
	d.k == 10
}

test_untouched_fields_do_not_raise_k if {
	# tax (L4) is in the dataset and the contract but not in the query.
	d := decide({})
	d.k == 5
}

test_contract_k_as_text_is_malformed if {
	d := decide({"contract": {"k_min": "20"}})
	not d.allow
	d.reasons == {"contract-k-malformed"}
	# Never compared as text ("20" would order above every number): the floor applies.
	d.k == 3
}

test_missing_contract_k_is_malformed if {
	d := decide_ops([{"op": "remove", "path": "/contract/k_min"}])
	d.reasons == {"contract-k-malformed"}
	d.k == 3
}

# The floors come from data: compared as numbers, 9 and 10 give 10 (as text, "9" > "10").
test_k_floors_are_read_from_data_and_compared_as_numbers if {
	d := decide({}) with data.config.k_floor as {"L1": 9, "L2": 10, "L3": 5, "L4": 10}
	d.allow
	d.k == 10
}

test_k_floor_raised_in_data_raises_k if {
	d := decide({}) with data.config.k_floor.L2 as 7
	d.k == 7
}

# --- disclosure thresholds -------------------------------------------------------------------

test_contract_dominance_stricter_than_the_floors_is_kept if {
	d := decide({"contract": {"dominance": {"n": 3, "k": 70, "p": 10}}})
	d.allow
	d.disclosure == {"k": 5, "dominance_n": 3, "dominance_k": 70, "p_percent": 10, "protection_percent": 10}
}

test_contract_dominance_laxer_than_the_floors_is_raised if {
	d := decide({"contract": {"dominance": {"n": 1, "k": 95, "p": 0}}})
	d.allow
	d.disclosure.dominance_n == 2
	d.disclosure.dominance_k == 85
}

test_contract_dominance_equal_to_the_floors_is_kept if {
	d := decide({"contract": {"dominance": {"n": 2, "k": 85, "p": 0}}})
	d.disclosure.dominance_n == 2
	d.disclosure.dominance_k == 85
	d.disclosure.p_percent == 0
}

test_contract_dominance_as_text_falls_back_to_the_floors if {
	d := decide({"contract": {"dominance": {"n": "9", "k": "1", "p": "50"}}})
	d.disclosure == {"k": 5, "dominance_n": 2, "dominance_k": 85, "p_percent": 0, "protection_percent": 10}
}

test_missing_dominance_falls_back_to_the_floors if {
	d := decide_ops([{"op": "remove", "path": "/contract/dominance"}])
	d.allow
	d.disclosure == {"k": 5, "dominance_n": 2, "dominance_k": 85, "p_percent": 0, "protection_percent": 10}
}

test_no_contract_discloses_only_floors if {
	d := decide({"contract": null})
	d.disclosure == {"k": 0, "dominance_n": 2, "dominance_k": 85, "p_percent": 0, "protection_percent": 10}
}

floors_under_test := {"dominance_floor": {"n": 4, "k": 60}, "p_percent_floor": 5, "protection_percent": 15}

test_disclosure_floors_are_read_from_data if {
	d := decide({}) with data.config.disclosure as floors_under_test
	d.disclosure == {"k": 5, "dominance_n": 4, "dominance_k": 60, "p_percent": 5, "protection_percent": 15}
}

test_contract_p_missing_takes_the_p_floor if {
	d := decide_ops([{"op": "remove", "path": "/contract/dominance/p"}]) with data.config.disclosure as floors_under_test
	d.disclosure.p_percent == 5
}

test_contract_stricter_than_data_floors_is_kept if {
	d := decide({"contract": {"dominance": {"n": 5, "k": 50, "p": 20}}}) with data.config.disclosure as floors_under_test
	d.disclosure == {"k": 5, "dominance_n": 5, "dominance_k": 50, "p_percent": 20, "protection_percent": 15}
}

# --- verdict: clear --------------------------------------------------------------------------

test_clear_field_grouped_raw_flows_clear if {
	d := decide({})
	d.fields.town == "clear"
}

test_clear_field_filtered_raw_flows_clear if {
	d := ask({"group_by": [], "filters": [filter("town", "in", "raw")]})
	d.allow
	d.fields == {"town": "clear", "kwh": "aggregate"}
}

test_quasi_identifier_contracted_clear_flows_clear if {
	d := decide({"contract": {"fields": {"owner": "clear"}}, "query": {"group_by": [dim("owner", "raw")]}})
	d.allow
	d.fields == {"owner": "clear", "kwh": "aggregate"}
}

# A field used several ways flows in its most revealing form.
test_clear_and_generalized_uses_flow_clear if {
	d := decide({
		"contract": {"fields": {"industry": "clear"}},
		"query": {"group_by": [dim("industry", "raw")], "filters": [filter("industry", "in", "division")]},
	})
	d.allow
	d.fields.industry == "clear"
}

# --- verdict: generalize ---------------------------------------------------------------------

test_date_by_month_flows_generalized if {
	d := ask({"group_by": [dim("month", "month")]})
	d.allow
	d.fields == {"month": "generalize", "kwh": "aggregate"}
}

test_date_by_quarter_and_year_flow_generalized if {
	q := ask({"group_by": [dim("month", "quarter")]})
	q.fields.month == "generalize"
	y := ask({"group_by": [dim("month", "year")]})
	y.fields.month == "generalize"
}

test_industry_by_group_division_or_section_flows_generalized if {
	every level in ["group", "division", "section"] {
		d := ask({"group_by": [dim("industry", level)]})
		d.allow
		d.fields.industry == "generalize"
	}
}

test_date_filter_aligned_with_years_flows_generalized if {
	d := ask({"filters": [filter("month", "range", "year")]})
	d.allow
	d.fields == {"town": "clear", "month": "generalize", "kwh": "aggregate"}
}

test_clear_field_at_a_coarser_level_flows_generalized if {
	d := decide({"contract": {"fields": {"industry": "clear"}}, "query": {"group_by": [dim("industry", "division")]}})
	d.allow
	d.fields.industry == "generalize"
}

test_clear_measure_in_bins_flows_generalized if {
	d := ask({"group_by": [dim("employees", "bins")]})
	d.allow
	d.fields == {"employees": "generalize", "kwh": "aggregate"}
}

test_binned_and_summed_field_flows_generalized if {
	d := ask({"group_by": [dim("employees", "bins")], "measures": [sum_of("employees")]})
	d.allow
	d.fields == {"employees": "generalize"}
}

# Levels that generalise each kind come from data.
test_generalizing_levels_are_read_from_data if {
	d := ask({"group_by": [dim("month", "week")]}) with data.config.generalize.date as ["week"]
	d.allow
	d.fields.month == "generalize"
	by_month := ask({"group_by": [dim("month", "month")]}) with data.config.generalize.date as ["week"]
	by_month.reasons == {"generalization-required"}
}

# --- verdict: pseudonymize -------------------------------------------------------------------

test_identifier_grouped_under_pseudonymize_flows_pseudonymized if {
	d := ask({"group_by": [dim("name", "raw")]})
	d.allow
	d.fields == {"name": "pseudonymize", "kwh": "aggregate"}
}

test_quasi_identifier_contracted_pseudonymized_flows_pseudonymized if {
	d := decide({"contract": {"fields": {"owner": "pseudonymize"}}, "query": {"group_by": [dim("owner", "raw")]}})
	d.allow
	d.fields.owner == "pseudonymize"
}

test_pseudonymized_group_with_a_clear_field_keeps_both_forms if {
	d := ask({"group_by": [dim("town", "raw"), dim("name", "raw")]})
	d.allow
	d.fields == {"town": "clear", "name": "pseudonymize", "kwh": "aggregate"}
}

# --- verdict: aggregate ----------------------------------------------------------------------

test_measures_flow_aggregated if {
	d := ask({"group_by": [], "measures": [sum_of("kwh"), {"fn": "ratio", "fields": ["output", "kwh"]}]})
	d.allow
	d.fields == {"kwh": "aggregate", "output": "aggregate"}
	d.k == 5
}

test_count_alone_touches_no_field if {
	d := ask({"measures": [{"fn": "count", "fields": []}]})
	d.allow
	d.fields == {"town": "clear"}
}

test_grand_total_without_dimensions if {
	d := ask({"group_by": []})
	d.allow
	d.fields == {"kwh": "aggregate"}
}

# --- verdict: deny, per reason ---------------------------------------------------------------

test_identifier_in_clear_is_denied if {
	d := ask({"group_by": [dim("phone", "raw")]})
	d.reasons == {"identifier-never-in-clear"}
	denied_for(d, "phone", {"identifier-never-in-clear"})
	d.fields.kwh == "aggregate"
}

test_identifier_in_clear_is_denied_as_a_measure_too if {
	d := decide({"contract": {"fields": {"phone": "clear"}}, "query": {"measures": [sum_of("phone")]}})
	"identifier-never-in-clear" in d.reasons
	d.fields.phone == "deny"
}

test_entity_field_as_a_dimension_is_denied if {
	d := ask({"group_by": [dim("uscc", "raw")]})
	d.reasons == {"entity-field-not-usable", "field-not-in-contract"}
	denied_for(d, "uscc", {"entity-field-not-usable", "field-not-in-contract"})
}

test_entity_field_is_denied_even_if_contracted if {
	d := decide({"contract": {"fields": {"uscc": "pseudonymize"}}, "query": {"group_by": [dim("uscc", "raw")]}})
	d.reasons == {"entity-field-not-usable"}
	denied_for(d, "uscc", {"entity-field-not-usable"})
}

test_field_the_contract_does_not_list_is_denied if {
	d := ask({"group_by": [dim("revenue", "raw")]})
	d.reasons == {"field-not-in-contract"}
	denied_for(d, "revenue", {"field-not-in-contract"})
	d.fields.kwh == "aggregate"
}

test_contracted_field_the_dataset_lacks_is_denied_the_same_way if {
	d := ask({"group_by": [dim("ghost", "raw")]})
	d.reasons == {"field-not-in-contract"}
	denied_for(d, "ghost", {"field-not-in-contract"})
}

test_dataset_field_dropped_from_the_contract_is_denied if {
	d := decide_ops([{"op": "remove", "path": "/contract/fields/town"}])
	d.reasons == {"field-not-in-contract"}
	denied_for(d, "town", {"field-not-in-contract"})
}

test_null_field_form_is_an_unknown_form if {
	d := decide({"contract": {"fields": {"town": null}}})
	d.reasons == {"unknown-field-form"}
	denied_for(d, "town", {"unknown-field-form"})
}

test_measure_not_in_the_contract_is_denied if {
	d := decide_ops([{"op": "remove", "path": "/contract/fields/kwh"}])
	d.reasons == {"field-not-in-contract"}
	denied_for(d, "kwh", {"field-not-in-contract"})
}

test_sensitive_field_as_a_dimension_is_denied if {
	d := ask({"group_by": [dim("tax", "bins")]})
	d.reasons == {"field-aggregate-only", "sensitive-field-aggregate-only"}
	denied_for(d, "tax", {"field-aggregate-only", "sensitive-field-aggregate-only"})
}

# Even a contract that lists it in clear cannot let a sensitive field's values out.
test_sensitive_field_contracted_clear_is_still_aggregate_only if {
	d := decide({"contract": {"fields": {"output": "clear"}}, "query": {"filters": [filter("output", "range", "raw")]}})
	d.reasons == {"sensitive-field-aggregate-only"}
	denied_for(d, "output", {"sensitive-field-aggregate-only"})
}

test_aggregate_only_field_in_bins_is_denied if {
	d := ask({"group_by": [dim("kwh", "bins")]})
	d.reasons == {"field-aggregate-only"}
	denied_for(d, "kwh", {"field-aggregate-only"})
}

test_aggregate_only_field_as_a_raw_dimension_is_denied if {
	d := ask({"group_by": [dim("kwh", "raw")]})
	d.reasons == {"field-aggregate-only", "measure-dimension-requires-bins"}
}

test_date_by_day_under_generalize_is_denied if {
	d := ask({"group_by": [dim("month", "day")]})
	d.reasons == {"generalization-required"}
	denied_for(d, "month", {"generalization-required"})
}

test_raw_date_under_generalize_is_denied if {
	d := ask({"group_by": [dim("month", "raw")]})
	d.reasons == {"generalization-required"}
}

test_date_filter_at_day_level_under_generalize_is_denied if {
	d := ask({"filters": [filter("month", "range", "day")]})
	d.reasons == {"generalization-required"}
}

test_bins_do_not_generalize_a_date if {
	d := ask({"group_by": [dim("month", "bins")]})
	d.reasons == {"generalization-required"}
}

test_date_levels_do_not_generalize_an_industry_code if {
	d := ask({"group_by": [dim("industry", "year")]})
	d.reasons == {"generalization-required"}
}

test_industry_class_is_raw if {
	d := ask({"group_by": [dim("industry", "class")]})
	d.reasons == {"generalization-required"}
}

test_code_without_a_hierarchy_cannot_be_generalized if {
	d := decide({"dataset": {"fields": {"industry": {"hierarchy": null}}}, "query": {"group_by": [dim("industry", "division")]}})
	d.reasons == {"generalization-required"}
}

# One use that needs generalising and is not denies the field, whatever its other uses.
test_one_ungeneralized_use_denies_the_field if {
	d := ask({"group_by": [dim("month", "year")], "filters": [filter("month", "eq", "raw")]})
	d.reasons == {"generalization-required"}
	denied_for(d, "month", {"generalization-required"})
}

test_filter_on_a_pseudonymized_field_is_denied if {
	d := decide({"contract": {"fields": {"owner": "pseudonymize"}}, "query": {"filters": [filter("owner", "in", "raw")]}})
	d.reasons == {"filter-on-pseudonymized-field"}
	denied_for(d, "owner", {"filter-on-pseudonymized-field"})
	d.fields.town == "clear"
}

test_filter_on_an_identifier_is_denied if {
	d := ask({"filters": [filter("name", "eq", "raw")]})
	d.reasons == {"filter-on-identifier", "filter-on-pseudonymized-field"}
	denied_for(d, "name", {"filter-on-identifier", "filter-on-pseudonymized-field"})
}

test_filter_on_the_entity_field_is_denied if {
	d := ask({"filters": [filter("uscc", "eq", "raw")]})
	d.reasons == {"entity-field-not-usable", "field-not-in-contract", "filter-on-identifier"}
}

test_clear_measure_as_a_raw_dimension_is_denied if {
	d := ask({"group_by": [dim("employees", "raw")]})
	d.reasons == {"measure-dimension-requires-bins"}
	denied_for(d, "employees", {"measure-dimension-requires-bins"})
}

test_measure_dimension_without_a_level_is_denied if {
	d := ask({"group_by": [{"field": "employees", "level": null}]})
	d.reasons == {"malformed-query", "measure-dimension-requires-bins"}
}

test_filter_on_a_clear_measure_is_denied if {
	d := ask({"filters": [filter("employees", "range", "raw")]})
	d.reasons == {"filter-on-measure"}
	denied_for(d, "employees", {"filter-on-measure"})
}

test_filter_on_a_binned_measure_is_still_denied if {
	d := ask({"filters": [filter("employees", "range", "bins")]})
	d.reasons == {"filter-on-measure"}
}

test_filter_on_an_aggregate_only_measure_is_denied if {
	d := ask({"filters": [filter("kwh", "range", "raw")]})
	d.reasons == {"field-aggregate-only", "filter-on-measure"}
}

test_dimension_as_a_measure_is_denied if {
	d := ask({"measures": [sum_of("town")]})
	d.reasons == {"measure-not-numeric", "not-a-measure"}
	denied_for(d, "town", {"measure-not-numeric", "not-a-measure"})
}

test_numeric_dimension_is_not_a_measure if {
	d := decide({"dataset": {"fields": {"town": {"type": "integer"}}}, "query": {"measures": [sum_of("town")]}})
	d.reasons == {"not-a-measure"}
}

test_text_measure_is_not_numeric if {
	d := decide({"dataset": {"fields": {"kwh": {"type": "string"}}}})
	d.reasons == {"measure-not-numeric"}
	denied_for(d, "kwh", {"measure-not-numeric"})
}

test_pseudonymized_field_as_a_measure_is_denied if {
	d := ask({"measures": [sum_of("name")]})
	d.reasons == {"measure-form-not-aggregable", "measure-not-numeric", "not-a-measure"}
}

test_pseudonymized_measure_cannot_be_aggregated if {
	d := decide({"contract": {"fields": {"kwh": "pseudonymize"}}})
	d.reasons == {"measure-form-not-aggregable"}
	denied_for(d, "kwh", {"measure-form-not-aggregable"})
}

test_unknown_field_form_is_denied if {
	d := ask({"group_by": [dim("owner", "raw")]})
	d.reasons == {"unknown-field-form"}
	denied_for(d, "owner", {"unknown-field-form"})
}

test_unknown_form_of_a_measure_is_denied if {
	d := decide({"contract": {"fields": {"kwh": "sealed"}}})
	d.reasons == {"measure-form-not-aggregable", "unknown-field-form"}
}

test_statistic_not_admitted_by_the_level_is_denied if {
	d := ask({"measures": [{"fn": "mean", "fields": ["tax"]}]})
	d.reasons == {"statistic-not-allowed-for-sensitivity"}
	denied_for(d, "tax", {"statistic-not-allowed-for-sensitivity"})
}

test_ratio_touching_l4_is_denied_for_the_l4_field_only if {
	d := ask({"measures": [{"fn": "ratio", "fields": ["output", "tax"]}]})
	d.reasons == {"statistic-not-allowed-for-sensitivity"}
	d.fields.output == "aggregate"
	d.fields.tax == "deny"
}

test_unknown_sensitivity_level_is_denied if {
	d := decide({"dataset": {"fields": {"kwh": {"sensitivity": "L9"}}}})
	not d.allow
	d.reasons == {"statistic-not-allowed-for-sensitivity", "unknown-sensitivity-level"}
}

test_a_use_with_no_verdict_is_denied if {
	# Every real use gets a form or a denial; take the forms away and the allow must go too.
	d := decide({}) with flow.clear_fields as set() with flow.aggregated_fields as set()
	not d.allow
	d.reasons == {"field-verdict-missing"}
	d.fields == {}
}

# --- query shape, folded in from broker.query ------------------------------------------------

test_no_measures_is_denied if {
	d := ask({"measures": []})
	not d.allow
	d.reasons == {"no-measures"}
}

test_four_dimensions_are_allowed if {
	d := ask({"group_by": [dim("town", "raw"), dim("industry", "division"), dim("month", "year"), dim("employees", "bins")]})
	d.allow
}

test_five_dimensions_are_denied if {
	d := ask({"group_by": [dim("town", "raw"), dim("industry", "division"), dim("month", "year"), dim("name", "raw"), dim("employees", "bins")]})
	d.reasons == {"too-many-dimensions"}
}

test_nine_measures_are_denied if {
	d := ask({"measures": [m | some _ in numbers.range(1, 9); m := sum_of("kwh")]})
	d.reasons == {"too-many-measures"}
}

test_nine_filters_are_denied if {
	d := ask({"filters": [f | some i in numbers.range(1, 9); f := filter("town", "eq", "raw")]})
	d.reasons == {"too-many-filters"}
}

test_query_limits_are_read_from_data if {
	d := ask({"group_by": [dim("town", "raw"), dim("month", "year")]}) with data.config.query.max_dimensions as 1
	d.reasons == {"too-many-dimensions"}
}

# --- several reasons at once ------------------------------------------------------------------

test_every_failing_requirement_is_reported if {
	d := decide({
		"principal": {"roles": ["provider"], "registered": false},
		"now": 5000,
		"usage": {"queries_today": 10},
		"contract": {"status": "revoked", "consumer_org": "env", "k_min": "5"},
		"query": {"purpose": "marketing", "group_by": [dim("phone", "raw")]},
	})
	not d.allow
	d.reasons == {
		"role-not-permitted", "org-not-registered", "contract-not-active", "consumer-not-party",
		"contract-expired", "daily-quota-exhausted", "purpose-unknown", "purpose-not-in-contract",
		"contract-k-malformed", "identifier-never-in-clear",
	}
	d.fields == {"phone": "deny", "kwh": "aggregate"}
}

# --- the broker's own "expired" reading of valid_until ----------------------------------------

test_expired_status_is_reported_as_expired_only if {
	d := decide({"contract": {"status": "expired"}})
	not d.allow
	d.reasons == {"contract-expired"}
}

test_expired_status_and_past_the_window_is_one_reason if {
	d := decide({"contract": {"status": "expired"}, "now": 2500})
	d.reasons == {"contract-expired"}
}

# --- a pseudonymized field is grouped by its stored values only -------------------------------

test_a_pseudonymized_field_cannot_be_binned if {
	d := decide({"contract": {"fields": {"owner": "pseudonymize"}}, "query": {"group_by": [dim("owner", "bins")]}})
	d.reasons == {"pseudonymized-field-not-regrouped"}
}

test_a_pseudonymized_code_cannot_be_taken_to_a_coarser_level if {
	d := decide({"contract": {"fields": {"industry": "pseudonymize"}}, "query": {"group_by": [dim("industry", "section")]}})
	d.reasons == {"pseudonymized-field-not-regrouped"}
	d.fields.industry == "deny"
}

test_a_pseudonymized_field_grouped_raw_is_allowed if {
	d := decide({"contract": {"fields": {"owner": "pseudonymize"}}, "query": {"group_by": [dim("owner", "raw")]}})
	d.allow
	d.fields.owner == "pseudonymize"
}

# --- the decision in two parts: terms (cached by the broker) and the moment -----------------

terms_of(patch) := t if {
	t := flow.terms with input as object.union(base, patch)
}

test_the_terms_part_never_reads_the_moment if {
	t := terms_of({})
	t == terms_of({"now": 5, "usage": {"queries_today": 99}})
	t == flow.terms with input as json.patch(base, [
		{"op": "remove", "path": "/now"},
		{"op": "remove", "path": "/usage"},
	])
	t.allow == true
	t.reasons == set()
	t.limits == {"valid_from": 1000, "valid_until": 2000, "max_queries_per_day": 10}
	not "quota_remaining" in object.keys(t)
}

test_the_terms_part_keeps_every_other_reason if {
	t := terms_of({"now": 5000, "contract": {"status": "suspended"}})
	t.allow == false
	t.reasons == {"contract-not-active"}
}

test_without_a_contract_the_terms_part_has_no_limits if {
	t := flow.terms with input as json.patch(base, [{"op": "remove", "path": "/contract"}])
	t.limits == null
	"no-active-contract" in t.reasons
}

test_the_limits_are_the_contracts_numbers_or_null if {
	terms_of({"contract": {"valid_until": "2000", "max_queries_per_day": true}}).limits == {
		"valid_from": 1000, "valid_until": null, "max_queries_per_day": null,
	}
}

# Per patch: the whole decision's reasons are the terms part's and these the moment adds.
moments := [
	[{}, set()],
	[{"now": 999}, {"contract-not-yet-valid"}],
	[{"now": 2000, "usage": {"queries_today": 10}}, {"contract-expired", "daily-quota-exhausted"}],
	[{"contract": {"status": "suspended"}, "usage": {"queries_today": 12}}, {"daily-quota-exhausted"}],
	[{"contract": {"valid_from": "1000"}}, {"contract-not-yet-valid"}],
]

test_the_whole_decision_is_terms_and_moment if {
	every m in moments {
		whole_is_terms_and_moment(m[0], m[1])
	}
}

whole_is_terms_and_moment(patch, moment) if {
	d := decide(patch)
	t := terms_of(patch)
	d.reasons == t.reasons | moment
	d.fields == t.fields
	d.field_reasons == t.field_reasons
	d.k == t.k
	d.disclosure == t.disclosure
}
