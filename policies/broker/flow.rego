# METADATA
# title: Which fields may flow to the industry brain, in which form
# description: |
#   Judges an aggregate query against its usage contract and the dataset's field roles.
#   Every deny is written as "not <requirement>" so that missing input yields a reason.
#   Per-field verdicts: clear (released as group keys or used in filters), aggregate (only
#   inside statistics), deny. Thresholds come from the contract and data.config.
package broker.flow

default allow := false

allow if {
	input.contract.status == "active"
	count(deny) == 0
}

contract_present if is_object(input.contract)

deny contains "role-not-permitted" if not "consumer" in input.principal.roles

deny contains "org-not-registered" if not input.principal.registered == true

deny contains "no-active-contract" if not contract_present

deny contains "contract-not-active" if {
	contract_present
	not input.contract.status == "active"
}

deny contains "consumer-not-party" if {
	contract_present
	not input.contract.consumer_org == input.principal.org
}

deny contains "contract-not-yet-valid" if {
	contract_present
	not input.now >= input.contract.valid_from
}

deny contains "contract-expired" if {
	contract_present
	not input.now < input.contract.valid_until
}

deny contains "daily-quota-exhausted" if {
	contract_present
	not input.usage.queries_today < input.contract.max_queries_per_day
}

deny contains "purpose-unknown" if not data.config.purposes[input.query.purpose]

deny contains "purpose-not-in-contract" if {
	contract_present
	not input.query.purpose in input.contract.purposes
}

# The contract's k must reach the floor of every sensitivity level the query touches (and the
# L1 floor in any case). Written per level rather than with max(): regopy 1.5.2's max() compares
# numbers as text (max({3, 10}) == 3), which would silently lower the floor.
deny contains "k-below-floor" if {
	contract_present
	some level in floor_levels
	not input.contract.k_min >= data.config.k_floor[level]
}

deny contains d.reason if some d in use_denials

floor_levels contains "L1"

floor_levels contains input.dataset.fields[u.field].sensitivity if some u in input.query.uses

default k := 0

k := input.contract.k_min if contract_present

# Per use of a field: why it may not flow. A field the contract does not list is reported the
# same way whether or not the dataset has it, so probing reveals no field names.
use_denials contains {"field": u.field, "reason": "field-not-in-contract"} if {
	contract_present
	some u in input.query.uses
	not input.contract.fields[u.field]
}

use_denials contains {"field": u.field, "reason": "identifier-never-flows"} if {
	some u in input.query.uses
	input.dataset.fields[u.field].role == "identifier"
}

use_denials contains {"field": u.field, "reason": "entity-field-not-usable"} if {
	some u in input.query.uses
	input.dataset.fields[u.field].role == "entity"
}

use_denials contains {"field": u.field, "reason": "dimension-requires-clear-form"} if {
	some u in input.query.uses
	u.use in {"dimension", "filter"}
	input.contract.fields[u.field]
	not input.contract.fields[u.field] == "clear"
}

use_denials contains {"field": u.field, "reason": "sensitive-field-aggregate-only"} if {
	some u in input.query.uses
	u.use in {"dimension", "filter"}
	input.dataset.fields[u.field].role == "sensitive"
}

use_denials contains {"field": u.field, "reason": "not-a-measure"} if {
	some u in input.query.uses
	u.use == "measure"
	input.contract.fields[u.field]
	not input.dataset.fields[u.field].role in {"measure", "sensitive"}
}

use_denials contains {"field": u.field, "reason": "measure-not-numeric"} if {
	some u in input.query.uses
	u.use == "measure"
	input.contract.fields[u.field]
	not input.dataset.fields[u.field].type in {"integer", "number"}
}

use_denials contains {"field": u.field, "reason": "measure-form-not-aggregable"} if {
	some u in input.query.uses
	u.use == "measure"
	input.contract.fields[u.field]
	not input.contract.fields[u.field] in {"aggregate", "clear"}
}

used_fields contains u.field if some u in input.query.uses

denied_fields contains d.field if some d in use_denials

clear_fields contains u.field if {
	some u in input.query.uses
	u.use in {"dimension", "filter"}
}

fields[f] := "deny" if {
	some f in denied_fields
}

fields[f] := "clear" if {
	some f in used_fields
	not f in denied_fields
	f in clear_fields
}

fields[f] := "aggregate" if {
	some f in used_fields
	not f in denied_fields
	not f in clear_fields
}

field_reasons[f] := {d.reason | some d in use_denials; d.field == f} if some f in denied_fields

# Disclosure thresholds: the contract's, made at least as strict as the floors in
# data.config.disclosure (a larger n, a smaller k percent, a larger p). Written with else
# rather than max()/min() for the reason given at k-below-floor.
floors := data.config.disclosure

contract_dominance := object.get(object.get(input, "contract", {}), "dominance", {})

dominance_n := contract_dominance.n if {
	contract_dominance.n >= floors.dominance_floor.n
} else := floors.dominance_floor.n

dominance_k := contract_dominance.k if {
	contract_dominance.k <= floors.dominance_floor.k
} else := floors.dominance_floor.k

contract_p := object.get(contract_dominance, "p", 0)

p_percent := contract_p if {
	contract_p >= floors.p_percent_floor
} else := floors.p_percent_floor

disclosure := {
	"k": k,
	"dominance_n": dominance_n,
	"dominance_k": dominance_k,
	"p_percent": p_percent,
	"protection_percent": floors.protection_percent,
}

decision := {
	"allow": allow,
	"reasons": deny,
	"fields": fields,
	"field_reasons": field_reasons,
	"k": k,
	"disclosure": disclosure,
}
