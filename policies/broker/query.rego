# METADATA
# title: The shape a query may take
# description: |
#   Judged on the query's structure (never its filter values) and the dataset's field roles
#   and sensitivity levels: how many dimensions, measures and filters, which statistics each
#   sensitivity level admits, no filters that single out an enterprise, and the k floor the
#   touched fields demand. Limits and floors come from data.config. The flow policy folds
#   these reasons into its decision; this package is also asked on its own.
package broker.query

limits := data.config.query

# The parts of the input, empty when missing or of another type. object.get() on a null is a
# type error on OPA and not on regopy, so the types are checked first.
dataset := input.dataset if is_object(input.dataset) else := {}

fields := dataset.fields if is_object(dataset.fields) else := {}

query := input.query if is_object(input.query) else := {}

group_by := query.group_by if is_array(query.group_by) else := []

measures := query.measures if is_array(query.measures) else := []

filters := query.filters if is_array(query.filters) else := []

# Each entry of the query, well-formed or not: a missing key would otherwise make a rule about
# that entry undefined (silently skipped) on one engine and not the other.
deny contains "malformed-query" if {
	some d in group_by
	not well_formed_use(d)
}

deny contains "malformed-query" if {
	some flt in filters
	not well_formed_use(flt)
}

deny contains "malformed-query" if {
	some m in measures
	not well_formed_measure(m)
}

well_formed_use(x) if {
	is_string(x.field)
	is_string(x.level)
}

well_formed_measure(m) if {
	is_string(m.fn)
	is_array(m.fields)
	every f in m.fields {
		is_string(f)
	}
}

# Each (statistic, field) a measure asks for; "" stands for a missing or malformed function.
measure_uses contains {"fn": fn, "field": f} if {
	some m in measures
	is_array(m.fields)
	some f in m.fields
	fn := measure_fn(m)
}

measure_fn(m) := m.fn if is_string(m.fn) else := ""

# The sensitivity level of each touched dataset field; "unknown" when it has none.
sensitivity_of[f] := fields[f].sensitivity if {
	some f in touched
	is_string(fields[f].sensitivity)
}

sensitivity_of[f] := "unknown" if {
	some f in touched
	fields[f]
	not has_sensitivity(f)
}

has_sensitivity(f) if is_string(fields[f].sensitivity)

default allow := false

allow if count(deny) == 0

deny contains "no-measures" if count(measures) == 0

deny contains "too-many-dimensions" if count(group_by) > limits.max_dimensions

deny contains "too-many-measures" if count(measures) > limits.max_measures

deny contains "too-many-filters" if count(filters) > limits.max_filters

deny contains d.reason if some d in field_denials

deny contains "unknown-sensitivity-level" if {
	some level in floor_levels
	not known_level(level)
}

known_level(level) if data.config.k_floor[level]

# A filter on the enterprise's own identity (the entity field or any identifier) selects one
# firm, whatever else the query does.
field_denials contains {"field": flt.field, "reason": "filter-on-identifier"} if {
	some flt in filters
	fields[flt.field].role in {"identifier", "entity"}
}

# Each statistic must be one the field's sensitivity level admits (data.config.query).
field_denials contains {"field": p.field, "reason": "statistic-not-allowed-for-sensitivity"} if {
	some p in measure_uses
	level := sensitivity_of[p.field]
	not statistic_allowed(p.fn, level)
}

# A `not` negates only a rule name or a plain comparison (see broker.flow).
statistic_allowed(fn, level) if fn in limits.measure_fns[level]

# Every field the query touches, the entity field included: counting enterprises touches it.
touched contains f if some f in {d.field | some d in group_by}

touched contains p.field if some p in measure_uses

touched contains flt.field if some flt in filters

touched contains dataset.entity_field if is_string(dataset.entity_field)

floor_levels contains "L1"

floor_levels contains level if some _, level in sensitivity_of

default k_floor := 0

# The k floor is the highest floor among the touched levels. Written with every rather than
# max(): regopy 1.5.2's max() compares numbers as text (max({3, 10}) == 3).
k_floor := f if {
	some level in floor_levels
	f := data.config.k_floor[level]
	every other in floor_levels {
		f >= data.config.k_floor[other]
	}
}

decision := {
	"allow": allow,
	"reasons": deny,
	"field_denials": field_denials,
	"k_floor": k_floor,
	"revision": data.policy.revision,
}
