# METADATA
# title: Who may do which action on which resource
# description: |
#   Role grants come from data.config.authz.grants: action -> role -> relation the caller's
#   organisation must have to the resource (any, owner, consumer, offered, actor). Default deny;
#   every reason is a stable kebab-case code returned to the caller.
package broker.authz

grants := data.config.authz.grants

default allow := false

allow if {
	action_known
	count(deny) == 0
}

deny contains "unknown-action" if not action_known

# A `not` negates only a rule name or a plain comparison: OPA hoists a nested reference or a
# call's arguments out of the negation, so `not grants[input.action]` is undefined, not true,
# when the action is missing, while regopy makes it true. The cross-engine cases pin this.
action_known if grants[input.action]

deny contains "role-not-permitted" if {
	action_known
	not role_permitted
}

deny contains "no-relation-to-resource" if {
	role_permitted
	not relation_holds
}

# Callers act for their organisation, which must be registered; only the operator (admin),
# who registers organisations in the first place, is exempt.
deny contains "org-not-registered" if {
	role_permitted
	not operator_grant
	not input.principal.registered == true
}

role_permitted if {
	some role in input.principal.roles
	grants[input.action][role]
}

relation_holds if {
	some role in input.principal.roles
	holds(grants[input.action][role])
}

operator_grant if {
	"admin" in input.principal.roles
	grants[input.action].admin
}

holds("any")

holds("owner") if input.resource.owner_org == input.principal.org

holds("consumer") if input.resource.consumer_org == input.principal.org

holds("offered") if input.principal.org in input.resource.offered_to

# An audit entry's actor: a consumer may prove its own entries (the receipts it was given).
holds("actor") if input.resource.actor_org == input.principal.org

decision := {"allow": allow, "reasons": deny, "revision": data.policy.revision}
