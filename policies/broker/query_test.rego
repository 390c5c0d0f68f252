# Unit tests for broker.query, asked on its own: the shape a query may take. Covers every deny
# reason (no-measures, too-many-dimensions/-measures/-filters at their limits,
# filter-on-identifier, statistic-not-allowed-for-sensitivity, unknown-sensitivity-level), the
# field_denials it hands to broker.flow, the k floor (highest floor among the touched levels,
# compared as numbers, the entity field and filtered fields included), input parts that are
# missing or of another type, and limits and floors read from data.config.
package broker.query_test

import data.broker.query

# A dataset of enterprise records and a sum of kwh by town.
base := {
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

decide(patch) := d if {
	d := query.decision with input as object.union(base, patch)
}

ask(q) := decide({"query": q})

decide_on(doc) := d if {
	d := query.decision with input as doc
}

dim(field, level) := {"field": field, "level": level}

filter(field) := {"field": field, "op": "eq", "level": "raw"}

stat(fn, fields) := {"fn": fn, "fields": fields}

repeat(x, n) := [x | some _ in numbers.range(1, n)]

# --- the baseline ----------------------------------------------------------------------------

test_plain_query_is_allowed if {
	d := decide({})
	d.allow == true
	d.reasons == set()
	d.field_denials == set()
	d.k_floor == 3
}

test_decision_carries_the_policy_revision if {
	d := decide({}) with data.policy.revision as "rev-under-test"
	d.revision == "rev-under-test"
}

# Filter values and purposes are not judged here.
test_purpose_is_not_judged_here if {
	d := ask({"purpose": "marketing"})
	d.allow
}

# --- no-measures -----------------------------------------------------------------------------

test_no_measures_is_denied if {
	d := ask({"measures": []})
	not d.allow
	d.reasons == {"no-measures"}
}

test_missing_measures_is_denied if {
	d := decide_on(json.remove(base, ["query/measures"]))
	d.reasons == {"no-measures"}
}

test_measures_of_another_type_count_as_none if {
	d := ask({"measures": {"fn": "sum", "fields": ["kwh"]}})
	d.reasons == {"no-measures"}
}

test_count_alone_is_a_measure if {
	d := ask({"measures": [stat("count", [])]})
	d.allow
}

test_empty_input_is_denied if {
	d := decide_on({})
	not d.allow
	d.reasons == {"no-measures"}
	d.k_floor == 3
}

test_missing_query_is_denied if {
	d := decide_on({"dataset": base.dataset})
	d.reasons == {"no-measures"}
}

test_query_of_another_type_is_denied if {
	d := decide_on({"dataset": base.dataset, "query": "sum kwh by town"})
	d.reasons == {"no-measures"}
}

# --- limits: max 4 dimensions, 8 measures, 8 filters -----------------------------------------

test_four_dimensions_are_allowed if {
	d := ask({"group_by": [dim("town", "raw"), dim("industry", "division"), dim("month", "year"), dim("employees", "bins")]})
	d.allow
}

test_five_dimensions_are_denied if {
	d := ask({"group_by": repeat(dim("town", "raw"), 5)})
	not d.allow
	d.reasons == {"too-many-dimensions"}
}

test_eight_measures_are_allowed if {
	d := ask({"measures": repeat(stat("sum", ["kwh"]), 8)})
	d.allow
}

test_nine_measures_are_denied if {
	d := ask({"measures": repeat(stat("sum", ["kwh"]), 9)})
	not d.allow
	d.reasons == {"too-many-measures"}
}

test_eight_filters_are_allowed if {
	d := ask({"filters": repeat(filter("town"), 8)})
	d.allow
}

test_nine_filters_are_denied if {
	d := ask({"filters": repeat(filter("town"), 9)})
	not d.allow
	d.reasons == {"too-many-filters"}
}

test_dimensions_or_filters_of_another_type_count_as_none if {
	d := ask({"group_by": "town", "filters": {"field": "name"}})
	d.allow
	d.k_floor == 3
}

test_limits_are_read_from_data if {
	limits := {"max_dimensions": 1, "max_measures": 1, "max_filters": 0, "measure_fns": data.config.query.measure_fns}
	d := ask({
		"group_by": [dim("town", "raw"), dim("month", "year")],
		"measures": [stat("sum", ["kwh"]), stat("sum", ["employees"])],
		"filters": [filter("town")],
	}) with data.config.query as limits
	d.reasons == {"too-many-dimensions", "too-many-measures", "too-many-filters"}
	at_limit := decide({}) with data.config.query as object.union(limits, {"max_filters": 1})
	at_limit.allow
}

# --- filter-on-identifier --------------------------------------------------------------------

test_filter_on_an_identifier_is_denied if {
	d := ask({"filters": [filter("name")]})
	not d.allow
	d.reasons == {"filter-on-identifier"}
	d.field_denials == {{"field": "name", "reason": "filter-on-identifier"}}
}

test_filter_on_the_entity_field_is_denied if {
	d := ask({"filters": [filter("uscc")]})
	d.reasons == {"filter-on-identifier"}
	d.field_denials == {{"field": "uscc", "reason": "filter-on-identifier"}}
}

# Judged on the structure, never the filter's operator or level.
test_filter_on_an_identifier_is_denied_at_any_level if {
	d := ask({"filters": [{"field": "phone", "op": "range", "level": "year"}]})
	d.reasons == {"filter-on-identifier"}
}

test_filter_on_a_quasi_identifier_is_not_judged_here if {
	d := ask({"filters": [filter("owner")]})
	d.allow
}

test_grouping_by_an_identifier_is_not_judged_here if {
	# broker.flow decides the form an identifier flows in; the shape alone is fine.
	d := ask({"group_by": [dim("name", "raw")]})
	d.allow
}

test_filter_on_a_field_the_dataset_lacks_is_not_judged_here if {
	d := ask({"filters": [filter("revenue")]})
	d.allow
}

# --- statistic-not-allowed-for-sensitivity ---------------------------------------------------

test_l4_sum_is_allowed if {
	d := ask({"measures": [stat("sum", ["tax"])]})
	d.allow
	d.k_floor == 10
}

test_l4_mean_is_denied if {
	d := ask({"measures": [stat("mean", ["tax"])]})
	not d.allow
	d.reasons == {"statistic-not-allowed-for-sensitivity"}
	d.field_denials == {{"field": "tax", "reason": "statistic-not-allowed-for-sensitivity"}}
}

test_ratio_with_an_l4_field_is_denied_for_that_field if {
	d := ask({"measures": [stat("ratio", ["output", "tax"])]})
	d.reasons == {"statistic-not-allowed-for-sensitivity"}
	d.field_denials == {{"field": "tax", "reason": "statistic-not-allowed-for-sensitivity"}}
}

test_l1_to_l3_admit_sum_mean_and_ratio if {
	every fn in ["sum", "mean", "ratio"] {
		d := ask({"measures": [stat(fn, ["employees", "kwh", "output"])]})
		d.allow
	}
}

test_unknown_statistic_is_denied if {
	d := ask({"measures": [stat("median", ["kwh"])]})
	d.reasons == {"statistic-not-allowed-for-sensitivity"}
}

test_statistic_names_are_exact if {
	d := ask({"measures": [stat("SUM", ["kwh"])]})
	d.reasons == {"statistic-not-allowed-for-sensitivity"}
}

test_statistics_per_level_are_read_from_data if {
	d := ask({"measures": [stat("mean", ["tax"])]}) with data.config.query.measure_fns.L4 as ["sum", "mean"]
	d.allow
	sum_refused := ask({"measures": [stat("sum", ["kwh"])]}) with data.config.query.measure_fns.L2 as ["mean"]
	sum_refused.reasons == {"statistic-not-allowed-for-sensitivity"}
}

# --- unknown-sensitivity-level ---------------------------------------------------------------

test_unknown_sensitivity_of_a_measure_is_denied if {
	d := decide({"dataset": {"fields": {"kwh": {"sensitivity": "L0"}}}})
	not d.allow
	d.reasons == {"statistic-not-allowed-for-sensitivity", "unknown-sensitivity-level"}
}

test_unknown_sensitivity_of_a_dimension_is_denied if {
	d := decide({"dataset": {"fields": {"town": {"sensitivity": "L9"}}}})
	d.reasons == {"unknown-sensitivity-level"}
}

test_unknown_sensitivity_of_the_entity_field_is_denied if {
	d := decide({"dataset": {"fields": {"uscc": {"sensitivity": "secret"}}}})
	d.reasons == {"unknown-sensitivity-level"}
}

test_unknown_sensitivity_of_an_untouched_field_is_ignored if {
	d := decide({"dataset": {"fields": {"tax": {"sensitivity": "L9"}}}})
	d.allow
}

test_levels_are_read_from_data if {
	floors := object.union(data.config.k_floor, {"L5": 20})
	d := decide({"dataset": {"fields": {"town": {"sensitivity": "L5"}}}}) with data.config.k_floor as floors
	d.allow
	d.k_floor == 20
}

# --- the k floor -----------------------------------------------------------------------------

test_l1_floor_applies_to_every_query if {
	d := decide({"dataset": {"fields": {"uscc": {"sensitivity": "L1"}, "kwh": {"sensitivity": "L1"}}}})
	d.k_floor == 3
}

test_l3_measure_gives_5 if {
	d := ask({"measures": [stat("sum", ["output"])]})
	d.k_floor == 5
}

# 5 and 10 compared as numbers give 10; compared as text "5" > "10" would give 5.
test_floors_5_and_10_give_10 if {
	d := ask({"measures": [stat("sum", ["output"]), stat("sum", ["tax"])]})
	d.allow
	d.k_floor == 10
}

test_floors_3_and_10_give_10 if {
	d := ask({"measures": [stat("sum", ["kwh", "tax"])]})
	d.k_floor == 10
}

test_entity_field_level_counts if {
	d := decide({"dataset": {"fields": {"uscc": {"sensitivity": "L3"}}}})
	d.allow
	d.k_floor == 5
}

test_dimension_level_counts if {
	d := ask({"group_by": [dim("phone", "raw")]})
	d.k_floor == 5
}

test_a_field_only_filtered_on_still_counts if {
	d := decide({
		"dataset": {"fields": {"town": {"sensitivity": "L4"}}},
		"query": {"group_by": [], "filters": [filter("town")]},
	})
	d.allow
	d.k_floor == 10
}

test_untouched_fields_do_not_count if {
	# tax (L4) and phone (L3) are in the dataset but not in the query.
	d := decide({})
	d.k_floor == 3
}

test_no_dataset_gives_the_l1_floor if {
	d := decide_on({"query": base.query})
	d.allow
	d.k_floor == 3
}

test_dataset_of_another_type_gives_the_l1_floor if {
	d := decide_on({"dataset": "d1", "query": base.query})
	d.k_floor == 3
}

test_dataset_fields_of_another_type_give_the_l1_floor if {
	d := decide({"dataset": {"fields": ["kwh", "town"], "entity_field": null}})
	d.allow
	d.k_floor == 3
}

# The floors come from data; 9 and 10 compared as numbers give 10 (as text, "9" > "10").
test_floors_are_read_from_data_and_compared_as_numbers if {
	d := decide({}) with data.config.k_floor as {"L1": 9, "L2": 10, "L3": 5, "L4": 10}
	d.k_floor == 10
}

test_equal_top_floors_give_that_floor if {
	d := ask({"measures": [stat("sum", ["output"])]}) with data.config.k_floor as {"L1": 3, "L2": 5, "L3": 5, "L4": 10}
	d.k_floor == 5
}

# --- several reasons at once ------------------------------------------------------------------

test_every_failing_shape_rule_is_reported if {
	d := ask({
		"group_by": repeat(dim("town", "raw"), 5),
		"measures": array.concat(repeat(stat("sum", ["kwh"]), 8), [stat("mean", ["tax"])]),
		"filters": array.concat(repeat(filter("town"), 8), [filter("name")]),
	})
	not d.allow
	d.reasons == {
		"too-many-dimensions", "too-many-measures", "too-many-filters",
		"filter-on-identifier", "statistic-not-allowed-for-sensitivity",
	}
	d.field_denials == {
		{"field": "name", "reason": "filter-on-identifier"},
		{"field": "tax", "reason": "statistic-not-allowed-for-sensitivity"},
	}
}

# --- malformed entries: denied, and the same on every engine ---------------------------------

test_a_dimension_without_level_is_malformed if {
	d := ask({"group_by": [{"field": "town"}]})
	d.reasons == {"malformed-query"}
}

test_a_filter_with_a_non_string_level_is_malformed if {
	d := ask({"filters": [{"field": "town", "op": "eq", "level": 3}]})
	d.reasons == {"malformed-query"}
}

test_a_measure_without_fn_is_malformed_and_not_allowed_for_l4 if {
	d := ask({"measures": [{"fields": ["tax"]}]})
	d.reasons == {"malformed-query", "statistic-not-allowed-for-sensitivity"}
	d.k_floor == 10
}

test_measure_fields_that_are_not_a_list_are_malformed_and_read_nothing if {
	d := ask({"measures": [{"fn": "sum", "fields": "tax"}]})
	d.reasons == {"malformed-query"}
	d.k_floor == 3
}

test_a_measure_field_that_is_not_a_string_is_malformed if {
	d := ask({"measures": [{"fn": "sum", "fields": [7]}]})
	"malformed-query" in d.reasons
}

test_a_touched_field_without_sensitivity_is_unknown if {
	doc := json.patch(base, [
		{"op": "remove", "path": "/dataset/fields/kwh/sensitivity"},
	])
	d := decide_on(doc)
	d.reasons == {"statistic-not-allowed-for-sensitivity", "unknown-sensitivity-level"}
}

test_a_well_formed_query_is_not_malformed if {
	d := ask({"group_by": [dim("town", "raw")], "filters": [filter("town")],
		"measures": [stat("count", []), stat("ratio", ["kwh", "employees"])]})
	not "malformed-query" in d.reasons
	d.allow
}
