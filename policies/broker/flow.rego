# METADATA
# title: Which fields may flow to the industry brain, in which form
# description: |
#   Judges an aggregate query against its usage contract, the dataset's field roles and
#   sensitivity levels, the purpose, the validity window and the remaining daily quota.
#   Per requested field the verdict is one of
#     clear         its values leave as they are (group keys, filters)
#     generalize    only at a coarser level: a date by month, quarter or year, an industry
#                   code by group, division or section, a number in the bins its
#                   provider declared (level "bins"; other edges are "free-bins")
#     pseudonymize  group keys replaced by keyed pseudonyms, stable within one contract
#     aggregate     only inside statistics (sum, mean, ratio)
#     deny          with the reasons in field_reasons
#   Every deny is written as "not <requirement>", so missing input yields a reason rather than
#   an allow. A `not` negates only a rule name or a plain comparison: OPA hoists a nested
#   reference or a call's arguments (`in`, `>=`, is_number) out of the negation, so such a
#   `not` over missing input is undefined on OPA and true on regopy. Each requirement is
#   therefore a rule of its own, and the cross-engine decision cases pin the difference. The query's shape is judged by broker.query, whose reasons are folded in here.
package broker.flow

import data.broker.query

default allow := false

allow if {
	input.contract.status == "active"
	count(deny) == 0
}

# The decision in two parts. The terms part (broker/flow/terms) is decided on the principal,
# the contract, the dataset and the query, never on the moment: the broker caches it per
# policy revision. The moment part (the rules below that read input.now and input.usage)
# judges the current second and the day's count against the contract's limits, which the
# terms part returns; the broker applies it on every query (broker.policy.decisions.moment,
# checked against this module on every engine).
deny contains reason if some reason in terms_deny

default terms_allow := false

terms_allow if {
	input.contract.status == "active"
	count(terms_deny) == 0
}

contract_present if is_object(input.contract)

# The parts of the input as objects, {} when missing or of another type: object.get() on a
# null is a type error on OPA and not on regopy, so nothing here calls it on input directly.
contract := input.contract if is_object(input.contract) else := {}

fields := query.fields

terms_deny contains "role-not-permitted" if not is_consumer

is_consumer if "consumer" in input.principal.roles

terms_deny contains "org-not-registered" if not input.principal.registered == true

terms_deny contains "no-active-contract" if not contract_present

# "expired" is the broker's own reading of valid_until; it is reported as contract-expired.
terms_deny contains "contract-not-active" if {
	contract_present
	not input.contract.status == "active"
	not input.contract.status == "expired"
}

terms_deny contains "contract-expired" if {
	contract_present
	input.contract.status == "expired"
}

terms_deny contains "consumer-not-party" if {
	contract_present
	not consumer_is_party
}

consumer_is_party if input.contract.consumer_org == input.principal.org

# The moment part: the validity window against the current second, the quota against the
# day's count.
deny contains "contract-not-yet-valid" if {
	contract_present
	not started
}

# Comparisons only between numbers: across types OPA orders by type (null < number) where
# regopy does not, so `900 < null` would hold on one engine and not the other.
started if {
	is_number(input.now)
	is_number(input.contract.valid_from)
	input.now >= input.contract.valid_from
}

deny contains "contract-expired" if {
	contract_present
	not ended_after_now
}

ended_after_now if {
	is_number(input.now)
	is_number(input.contract.valid_until)
	input.now < input.contract.valid_until
}

deny contains "daily-quota-exhausted" if {
	contract_present
	not quota_remaining > 0
}

# The limits the moment part reads, as the terms part returns them: each the contract's
# number, or null when missing or not a number (and so never met). Rules rather than a
# function: regopy's cost grows with every call.
limits := {
	"valid_from": valid_from,
	"valid_until": valid_until,
	"max_queries_per_day": max_queries_per_day,
}

valid_from := contract.valid_from if is_number(contract.valid_from) else := null

valid_until := contract.valid_until if is_number(contract.valid_until) else := null

max_queries_per_day := contract.max_queries_per_day if {
	is_number(contract.max_queries_per_day)
} else := null

terms_deny contains "purpose-unknown" if not purpose_known

purpose_known if data.config.purposes[input.query.purpose]

terms_deny contains "purpose-not-in-contract" if {
	contract_present
	not purpose_contracted
}

purpose_contracted if input.query.purpose in input.contract.purposes

# A k that is not a whole number denies rather than being compared (strings order after
# numbers in Rego, so "2" >= 10 would hold).
terms_deny contains "contract-k-malformed" if {
	contract_present
	not k_is_whole
}

k_is_whole if {
	is_number(input.contract.k_min)
	round(input.contract.k_min) == input.contract.k_min
}

terms_deny contains reason if some reason in query.deny

terms_deny contains d.reason if some d in use_denials

default quota_remaining := 0

quota_remaining := input.contract.max_queries_per_day - input.usage.queries_today if {
	is_number(input.contract.max_queries_per_day)
	is_number(input.usage.queries_today)
}

# The k that applies: the contract's, raised to the floor of every sensitivity level the query
# touches (broker.query). Raising is stricter than the parties agreed, never laxer.
default k := 0

k := input.contract.k_min if {
	k_is_whole
	input.contract.k_min >= query.k_floor
} else := query.k_floor if contract_present

# How a query uses its fields, derived from its structure.
uses contains {"field": d.field, "use": "dimension", "level": level_of(d)} if {
	some d in query.group_by
}

uses contains {"field": p.field, "use": "measure", "level": "aggregate"} if {
	some p in query.measure_uses
}

uses contains {"field": flt.field, "use": "filter", "level": level_of(flt)} if {
	some flt in query.filters
}

# A use without a level counts as raw (and the query as malformed: broker.query).
level_of(x) := x.level if is_string(x.level) else := "raw"

# Per used field, looked up once: its form under the contract, its role and kind in the
# dataset. Only the fields the query uses are visited (regopy's cost grows with every step).
form_of[f] := contract.fields[f] if some f in used_fields

role_of[f] := fields[f].role if some f in used_fields

# The kind of a field decides which levels generalise it (data.config.generalize).
kind_of[f] := "date" if {
	some f in used_fields
	fields[f].type == "date"
}

kind_of[f] := fields[f].hierarchy if {
	some f in used_fields
	fields[f].type == "string"
	is_string(fields[f].hierarchy)
}

kind_of[f] := "numeric" if {
	some f in used_fields
	fields[f].type in {"integer", "number"}
}

contracted_fields contains f if {
	some f in used_fields
	contract.fields[f]
}

dataset_fields contains f if {
	some f in used_fields
	fields[f]
}

magnitude_fields contains f if {
	some f, role in role_of
	role in {"measure", "sensitive"}
}

numeric_fields contains f if some f, "numeric" in kind_of

aggregable_fields contains f if {
	some f, form in form_of
	form in {"aggregate", "clear", "generalize"}
}

known_form_fields contains f if {
	some f, form in form_of
	form in {"aggregate", "clear", "generalize", "pseudonymize"}
}

# Uses whose keys or filter values a consumer sees, and those at a generalising level.
revealing contains u if {
	some u in uses
	u.use in {"dimension", "filter"}
}

generalized contains u if {
	some u in uses
	u.level in data.config.generalize[kind_of[u.field]]
}

# Per use of a field: why it may not flow. A field the contract does not list is reported the
# same way whether or not the dataset has it, so probing reveals no field names.
use_denials contains {"field": u.field, "reason": "field-not-in-contract"} if {
	contract_present
	some u in uses
	not u.field in contracted_fields
}

use_denials contains {"field": u.field, "reason": "field-not-in-contract"} if {
	contract_present
	some u in uses
	not u.field in dataset_fields
}

use_denials contains {"field": u.field, "reason": "entity-field-not-usable"} if {
	some u in uses
	role_of[u.field] == "entity"
}

use_denials contains {"field": u.field, "reason": "identifier-never-in-clear"} if {
	some u in uses
	role_of[u.field] == "identifier"
	form_of[u.field] == "clear"
}

use_denials contains {"field": u.field, "reason": "sensitive-field-aggregate-only"} if {
	some u in revealing
	role_of[u.field] == "sensitive"
}

use_denials contains {"field": u.field, "reason": "field-aggregate-only"} if {
	some u in revealing
	form_of[u.field] == "aggregate"
}

use_denials contains {"field": u.field, "reason": "generalization-required"} if {
	some u in revealing
	form_of[u.field] == "generalize"
	not u in generalized
}

# A pseudonymized field is grouped by its stored values only: its pseudonyms under several
# groupings (bins at moving edges, a hierarchy level against the public code list) can be
# lined up by their counts until each is unmasked.
use_denials contains {"field": u.field, "reason": "pseudonymized-field-not-regrouped"} if {
	some u in uses
	u.use == "dimension"
	form_of[u.field] == "pseudonymize"
	not u.level == "raw"
}

use_denials contains {"field": u.field, "reason": "filter-on-pseudonymized-field"} if {
	some u in uses
	u.use == "filter"
	form_of[u.field] == "pseudonymize"
}

# A measure's own figures are grouped only into its declared bins: a key that is a firm's
# exact value would publish that value, and so would a bin narrow enough to hold only it.
use_denials contains {"field": u.field, "reason": "measure-dimension-requires-bins"} if {
	some u in uses
	u.use == "dimension"
	role_of[u.field] == "measure"
	not u.level == "bins"
}

# A threshold on a firm's own figures selects firms by their secret: moved across one firm's
# value, it makes any answer, even a refusal, an oracle for that value.
use_denials contains {"field": u.field, "reason": "filter-on-measure"} if {
	some u in uses
	u.use == "filter"
	role_of[u.field] == "measure"
}

use_denials contains {"field": u.field, "reason": "not-a-measure"} if {
	some u in uses
	u.use == "measure"
	u.field in dataset_fields
	not u.field in magnitude_fields
}

use_denials contains {"field": u.field, "reason": "measure-not-numeric"} if {
	some u in uses
	u.use == "measure"
	u.field in dataset_fields
	not u.field in numeric_fields
}

use_denials contains {"field": u.field, "reason": "measure-form-not-aggregable"} if {
	some u in uses
	u.use == "measure"
	u.field in contracted_fields
	not u.field in aggregable_fields
}

use_denials contains {"field": u.field, "reason": "unknown-field-form"} if {
	some u in uses
	u.field in contracted_fields
	not u.field in known_form_fields
}

use_denials contains d if some d in query.field_denials

# The fields flowing in each form, by the uses that make them flow so.
aggregated_fields contains u.field if {
	some u in uses
	u.use == "measure"
}

pseudonymized_fields contains u.field if {
	some u in uses
	u.use == "dimension"
	form_of[u.field] == "pseudonymize"
}

generalized_fields contains u.field if {
	some u in generalized
	u in revealing
	form_of[u.field] in {"clear", "generalize"}
}

clear_fields contains u.field if {
	some u in revealing
	form_of[u.field] == "clear"
	not u in generalized
}

used_fields contains u.field if some u in uses

denied_fields contains d.field if some d in use_denials

allowed_fields := used_fields - denied_fields

# A field used several ways flows in its most revealing form.
fields_verdict[f] := "deny" if some f in denied_fields

fields_verdict[f] := "clear" if some f in allowed_fields & clear_fields

fields_verdict[f] := "pseudonymize" if {
	some f in (allowed_fields & pseudonymized_fields) - clear_fields
}

fields_verdict[f] := "generalize" if {
	some f in ((allowed_fields & generalized_fields) - clear_fields) - pseudonymized_fields
}

fields_verdict[f] := "aggregate" if {
	some f in (((allowed_fields & aggregated_fields) - clear_fields) - pseudonymized_fields)
		- generalized_fields
}

# A use that no rule above covers has no verdict: deny it rather than let it through.
terms_deny contains "field-verdict-missing" if {
	contract_present
	some f in used_fields
	not fields_verdict[f]
}

field_reasons[f] := {d.reason | some d in use_denials; d.field == f} if some f in denied_fields

# Disclosure thresholds: the contract's, made at least as strict as the floors in
# data.config.disclosure (a larger n, a smaller k percent, a larger p). Written with else
# rather than max()/min() for the reason given in broker.query.
floors := data.config.disclosure

contract_dominance := contract.dominance if is_object(contract.dominance) else := {}

dominance_n := contract_dominance.n if {
	is_number(contract_dominance.n)
	contract_dominance.n >= floors.dominance_floor.n
} else := floors.dominance_floor.n

dominance_k := contract_dominance.k if {
	is_number(contract_dominance.k)
	contract_dominance.k <= floors.dominance_floor.k
} else := floors.dominance_floor.k

contract_p := object.get(contract_dominance, "p", 0)

p_percent := contract_p if {
	is_number(contract_p)
	contract_p >= floors.p_percent_floor
} else := floors.p_percent_floor

disclosure := {
	"k": k,
	"dominance_n": dominance_n,
	"dominance_k": dominance_k,
	"p_percent": p_percent,
	"protection_percent": floors.protection_percent,
}

# The terms part of the decision: no moment reason, no quota, and the limits the moment is
# judged against (null without a contract, when the moment adds nothing).
terms := {
	"allow": terms_allow,
	"reasons": terms_deny,
	"fields": fields_verdict,
	"field_reasons": field_reasons,
	"k": k,
	"limits": terms_limits,
	"disclosure": disclosure,
	"revision": data.policy.revision,
}

terms_limits := limits if contract_present else := null

decision := {
	"allow": allow,
	"reasons": deny,
	"fields": fields_verdict,
	"field_reasons": field_reasons,
	"k": k,
	"quota_remaining": quota_remaining,
	"disclosure": disclosure,
	"revision": data.policy.revision,
}
