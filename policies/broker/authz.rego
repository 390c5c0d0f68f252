# METADATA
# title: Who may do which action on which resource
# description: |
#   Role grants come from data.config.authz.grants: action -> role -> relation the caller's
#   organisation must have to the resource (any, owner, consumer, offered). Default deny;
#   every reason is a stable kebab-case code returned to the caller.
package broker.authz

grants := data.config.authz.grants

default allow := false

allow if {
	grants[input.action]
	count(deny) == 0
}

deny contains "unknown-action" if not grants[input.action]

deny contains "role-not-permitted" if {
	grants[input.action]
	not role_permitted
}

deny contains "no-relation-to-resource" if {
	role_permitted
	not relation_holds
}

# Any grant other than "any" is about the caller's organisation, so it must be registered.
deny contains "org-not-registered" if {
	role_permitted
	not open_grant
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

open_grant if {
	some role in input.principal.roles
	grants[input.action][role] == "any"
}

holds("any")

holds("owner") if input.resource.owner_org == input.principal.org

holds("consumer") if input.resource.consumer_org == input.principal.org

holds("offered") if input.principal.org in input.resource.offered_to

decision := {"allow": allow, "reasons": deny}
