# fhirgate's shipped authorization policy.
#
# The gateway evaluates data.fhirgate.authz.decision for every request, and
# for every hit of a search or history. policy/README.md describes the
# input document, the consent data (data.fhirgate.consents), these rules
# in plain words, and how to write and test your own policy.
#
# How this file decides: rules add reasons to two sets, `grants` (what lets
# the request through, such as a scope or a consent) and `denials` (what
# stops it, or what it lacks). A request is allowed when something grants
# it and nothing denies it.
#
# The gateway asks for every search hit, so the rules are written to be
# cheap: each rule body starts with the tests on input.subject.kind,
# input.action or input.resource.type that OPA's rule index uses to skip
# the rules that do not apply.
package fhirgate.authz

# ---------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------

decision := {
	"allow": true,
	"unconditional": unconditional,
	"break_glass": break_glass_override,
	"reasons": sort(grants),
} if {
	allow
} else := {
	"allow": false,
	"unconditional": false,
	"break_glass": false,
	"reasons": denial_reasons,
}

default allow := false

allow if {
	count(denials) == 0
	count(grants) > 0
}

denial_reasons := sort(denials) if {
	count(denials) > 0
} else := ["nothing grants this request"]

# unconditional, on a type-level check, tells the gateway that every
# resource of the type is visible, so it need not check each hit.
default unconditional := false

# Systems see everything their scope covers.
unconditional if {
	input.subject.kind == "system"
	type_level
}

# Patients and practitioners see all resources of types that hold no
# patient data (Practitioner, Organization, Location...).
unconditional if {
	input.subject.kind in {"patient", "practitioner"}
	type_level
	not patient_data
}

# ---------------------------------------------------------------------------
# The request
# ---------------------------------------------------------------------------

# The SMART scope permission each FHIR interaction needs.
interaction_letter := {
	"create": "c",
	"read": "r",
	"vread": "r",
	"history-instance": "r",
	"search-type": "s",
	"history-type": "s",
	"update": "u",
	"delete": "d",
}

reading if input.action in {"read", "vread", "history-instance", "search-type", "history-type"}

writing if input.action in {"create", "update", "delete"}

# The patient compartments ("Patient/a") the resource belongs to.
compartments := input.resource.compartments if {
	is_array(input.resource.compartments)
} else := []

# A type-level check is made before a search or history of a whole type:
# it names no resource.
type_level if {
	input.action in {"search-type", "history-type"}
	input.resource.id == ""
	count(compartments) == 0
}

# patient_data: resources of this type can belong to patient compartments.
patient_data if input.resource.compartmentType == true

patient_data if count(compartments) > 0

# The resource as a reference, for reasons: "Observation/o1", or the type.
resource_ref := concat("/", [input.resource.type, input.resource.id]) if {
	input.resource.id != ""
} else := input.resource.type

# ---------------------------------------------------------------------------
# Scopes
# ---------------------------------------------------------------------------

# granting_scopes are the scopes (as the token spelled them) that let this
# subject make this request. A scope covers a request when its type is "*"
# or the resource type, and its permissions hold the interaction's letter.

# A system uses system/ scopes.
granting_scopes contains s.raw if {
	input.subject.kind == "system"
	letter := interaction_letter[input.action]
	some s in input.subject.scopes
	s.context == "system"
	s.type in {"*", input.resource.type}
	contains(s.perms, letter)
}

# Patients and practitioners use user/ scopes.
granting_scopes contains s.raw if {
	input.subject.kind in {"patient", "practitioner"}
	letter := interaction_letter[input.action]
	some s in input.subject.scopes
	s.context == "user"
	s.type in {"*", input.resource.type}
	contains(s.perms, letter)
}

# A patient uses patient/ scopes for themselves: not when the token's
# launch context names another patient.
granting_scopes contains s.raw if {
	input.subject.kind == "patient"
	object.get(input.subject, "patient", "") in {"", input.subject.fhirUser}
	letter := interaction_letter[input.action]
	some s in input.subject.scopes
	s.context == "patient"
	s.type in {"*", input.resource.type}
	contains(s.perms, letter)
}

# A practitioner uses patient/ scopes for the launch context patient only:
# every compartment of the resource must be that patient.
granting_scopes contains s.raw if {
	input.subject.kind == "practitioner"
	input.subject.patient != ""
	every p in compartments {
		p == input.subject.patient
	}
	letter := interaction_letter[input.action]
	some s in input.subject.scopes
	s.context == "patient"
	s.type in {"*", input.resource.type}
	contains(s.perms, letter)
}

grants contains sprintf("scope %s covers %s of %s", [raw, input.action, input.resource.type]) if {
	some raw in granting_scopes
}

denials contains sprintf("no scope covers %s of %s", [input.action, input.resource.type]) if {
	not input.action == "operation"
	count(granting_scopes) == 0
}

# ---------------------------------------------------------------------------
# Who may ask, and what nobody may do
# ---------------------------------------------------------------------------

# Only systems, patients and practitioners are served: a RelatedPerson or
# Person (kind "other") is denied.
denials contains sprintf("subjects of kind %q are not allowed", [input.subject.kind]) if {
	not input.subject.kind in {"system", "patient", "practitioner"}
}

# AuditEvents are an append-only record: nobody changes or removes them.
denials contains sprintf("nobody may %s an AuditEvent", [input.action]) if {
	input.resource.type == "AuditEvent"
	input.action in {"update", "delete"}
}

# ---------------------------------------------------------------------------
# Patients
# ---------------------------------------------------------------------------

# A patient reads only what is in their own compartment, and resources of
# types that hold no patient data.
denials contains sprintf("%s is not in the compartment of %s", [resource_ref, input.subject.fhirUser]) if {
	input.subject.kind == "patient"
	reading
	patient_data
	not type_level
	not input.subject.fhirUser in compartments
}

# A patient writes only their own Consents, Appointments and
# Communications, and Subscriptions (a type without patient compartments:
# the scope alone decides).
patient_writable := {"Consent", "Appointment", "Communication", "Subscription"}

denials contains sprintf("patient %s may only write Consent, Appointment, Communication and Subscription", [input.subject.fhirUser]) if {
	input.subject.kind == "patient"
	writing
	not input.resource.type in patient_writable
}

denials contains sprintf("%s is not in the compartment of %s", [resource_ref, input.subject.fhirUser]) if {
	input.subject.kind == "patient"
	writing
	input.resource.type in patient_writable
	patient_must_own
	not input.subject.fhirUser in compartments
}

# patient_must_own: a patient's write must be in their own compartment,
# always for Consent, Appointment and Communication, and for a resource of
# any other type that can be in a compartment.
patient_must_own if input.resource.type in {"Consent", "Appointment", "Communication"}

patient_must_own if patient_data

# ---------------------------------------------------------------------------
# Practitioners and consent
# ---------------------------------------------------------------------------

# A practitioner touching a resource in patient compartments needs, for
# each of those patients, an active consent that permits it.
#
# consent_verdicts[p] maps each consent of patient p that speaks about this
# request to "permit" or "deny"; silent consents are left out.
consent_verdicts[p] := verdicts if {
	input.subject.kind == "practitioner"
	some p in compartments
	verdicts := {id: verdict |
		some id, consent in data.fhirgate.consents[p]
		verdict := consent_verdict(consent)
	}
}

# A consent that denies wins over those that permit.
consent_denials contains sprintf("consent %s denies", [id]) if {
	some verdicts in consent_verdicts
	some id, "deny" in verdicts
}

consent_denials contains sprintf("no active consent of %s permits this", [p]) if {
	some p, verdicts in consent_verdicts
	not "deny" in verdicts
	not "permit" in verdicts
}

grants contains sprintf("consent %s permits", [id]) if {
	input.subject.kind == "practitioner"
	some verdicts in consent_verdicts
	some id, "permit" in verdicts
}

denials contains reason if {
	input.subject.kind == "practitioner"
	some reason in consent_denials
	not break_glass_override
	not consent_waived
}

# consent_waived: a request that needs no consent. The shipped policy
# waives none; a file of your own in this package may (policy/README.md
# has an example).
default consent_waived := false

# Break-glass: a practitioner who declares emergency treatment (purposeOfUse
# ETREAT) and holds a covering scope gets in without, or against, consent.
default break_glass_override := false

break_glass_override if {
	input.subject.kind == "practitioner"
	input.subject.purposeOfUse == "ETREAT"
	count(consent_denials) > 0
	count(granting_scopes) > 0
}

grants contains "break-glass: purposeOfUse ETREAT" if {
	input.subject.purposeOfUse == "ETREAT"
	break_glass_override
}

# consent_verdict(c) is "permit" or "deny" when consent c speaks about this
# request, and undefined when it is silent:
#  - among the rules of c whose conditions all hold, the deepest decide
#    (nested provisions are exceptions to their parent), and at equal
#    depth deny wins;
#  - the consent speaks only when its deciding rule names an actor (a
#    consent that names no one grants nobody anything).
consent_verdict(c) := verdict if {
	holding := [rule |
		some rule in c.rules
		every cond in rule.conds {
			cond_holds(cond.kind, cond, rule.type)
		}
	]
	deciding := max([[rule.depth, precedence[rule.type]] | some rule in holding])
	some rule in holding
	rule.depth == deciding[0]
	precedence[rule.type] == deciding[1]
	rule.names_actor == true
	verdict := rule.type
}

# At equal depth, deny wins over permit.
precedence := {"permit": 0, "deny": 1}

# cond_holds(kind, cond, type) is true when a consent condition holds for
# this request. type is the type of the rule the condition is on.

# actor: the requester is one of the actors (practitioner, organization or
# role).
cond_holds("actor", cond, _) if {
	some ref in cond.values
	ref in requester
}

# period: the request's time is within the period (start inclusive, end
# exclusive).
cond_holds("period", cond, _) if {
	not before_start(cond)
	not after_end(cond)
}

before_start(cond) if {
	is_number(cond.start_ns)
	input.time_ns < cond.start_ns
}

after_end(cond) if {
	is_number(cond.end_ns)
	input.time_ns >= cond.end_ns
}

# action: a read counts as "access" or "use", a create, update or delete as
# "correct" or "collect".
cond_holds("action", cond, _) if {
	some code in cond.values
	code in consent_actions
}

# purpose: the token's purposeOfUse is one of the purposes.
cond_holds("purpose", cond, _) if {
	input.subject.purposeOfUse != ""
	input.subject.purposeOfUse in cond.values
}

# class: the resource type is one of the classes.
cond_holds("class", cond, _) if input.resource.type in cond.values

# data: the resource is one of the references.
cond_holds("data", cond, _) if resource_ref in cond.values

# A condition fhirgate cannot check fails closed: it never holds on a
# permit rule, and always holds on a deny rule.
cond_holds(kind, _, "deny") if not kind in {"actor", "period", "action", "purpose", "class", "data"}

# The identities of the requester an actor condition can name: its
# fhirUser, organizations and roles.
requester contains input.subject.fhirUser

requester contains org if some org in input.subject.organizations

requester contains role if some role in input.subject.roles

# The consentaction codes the request counts as.
consent_actions := {"access", "use"} if {
	reading
} else := {"correct", "collect"} if {
	writing
}

# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------

# $erase (permanent removal of a patient's data) is for systems whose
# scope covers delete of Patient.
grants contains sprintf("scope %s allows operation erase", [s.raw]) if {
	input.action == "operation"
	input.operation == "erase"
	input.subject.kind == "system"
	some s in input.subject.scopes
	s.context == "system"
	s.type in {"*", "Patient"}
	contains(s.perms, "d")
}

# Key administration is for systems with every permission on every type.
grants contains sprintf("scope %s allows operation admin-keys", [s.raw]) if {
	input.action == "operation"
	input.operation == "admin-keys"
	input.subject.kind == "system"
	some s in input.subject.scopes
	s.context == "system"
	s.type == "*"
	s.perms == "cruds"
}

# A transparency-log receipt of a version, for a caller who may not read
# the version itself (it then comes without the salt, so it reveals no
# content): systems whose scope reads the type, or reads AuditEvent (the
# compliance role, which checks the log without reading records).
grants contains sprintf("scope %s allows operation receipt", [s.raw]) if {
	input.action == "operation"
	input.operation == "receipt"
	input.subject.kind == "system"
	some s in input.subject.scopes
	s.context == "system"
	s.type in {"*", "AuditEvent", input.resource.type}
	contains(s.perms, "r")
}

# What each operation needs, for the denial reason.
operation_needs := {
	"erase": "a system scope that covers delete of Patient",
	"admin-keys": "the system scope system/*.cruds",
	"receipt": "a system scope that covers read of the type or of AuditEvent",
}

denials contains sprintf("operation %s needs %s", [input.operation, need]) if {
	input.action == "operation"
	need := operation_needs[input.operation]
	count(grants) == 0
}

denials contains sprintf("operation %q is not supported", [input.operation]) if {
	input.action == "operation"
	not operation_needs[input.operation]
}
