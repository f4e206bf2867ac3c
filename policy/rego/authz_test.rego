# Tests of the shipped policy: `fhirgate policy test` or `opa test policy/rego`.
package fhirgate.authz_test

import data.fhirgate.authz

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# 2026-11-21T10:00:00Z
now := 1795255200000000000

y2020 := 1577836800000000000

y2026 := 1767225600000000000

y2027 := 1798761600000000000

y2030 := 1893456000000000000

# A v2 scope such as patient/Observation.rs.
scope(context, type, perms) := {
	"raw": sprintf("%s/%s.%s", [context, type, perms]),
	"context": context,
	"type": type,
	"perms": perms,
	"v2": true,
}

# A v1 scope such as user/Observation.read.
v1_perms := {"read": "rs", "write": "cud", "*": "cruds"}

scope_v1(context, type, perm) := {
	"raw": sprintf("%s/%s.%s", [context, type, perm]),
	"context": context,
	"type": type,
	"perms": v1_perms[perm],
	"v2": false,
}

subject(kind, fhir_user, scopes) := {
	"sub": "u1",
	"client_id": "app",
	"kind": kind,
	"fhirUser": fhir_user,
	"patient": "",
	"scopes": scopes,
	"purposeOfUse": "",
	"organizations": [],
	"roles": [],
}

system(scopes) := subject("system", "", scopes)

patient_a(scopes) := subject("patient", "Patient/a", scopes)

doctor(scopes) := object.union(subject("practitioner", "Practitioner/p1", scopes), {
	"organizations": ["Organization/o1"],
	"roles": ["PractitionerRole/r1"],
})

# The practitioner with user/*.cruds.
doc := doctor([scope("user", "*", "cruds")])

req(sub, action, resource) := {
	"subject": sub,
	"action": action,
	"operation": "",
	"resource": resource,
	"time": "2026-11-21T10:00:00Z",
	"time_ns": now,
}

op(sub, name) := object.union(req(sub, "operation", {"type": "Patient", "id": "a", "compartments": ["Patient/a"], "compartmentType": true}), {"operation": name})

obs(id, compartments) := {"type": "Observation", "id": id, "compartments": compartments, "compartmentType": true}

of_type(type, compartment_type) := {"type": type, "id": "", "compartments": [], "compartmentType": compartment_type}

res(type, id, compartments) := {"type": type, "id": id, "compartments": compartments, "compartmentType": true}

practitioner_res(id) := {"type": "Practitioner", "id": id, "compartments": [], "compartmentType": false}

decide(input_doc) := d if {
	d := authz.decision with input as input_doc
}

decide_with(input_doc, consents) := d if {
	d := authz.decision with input as input_doc with data.fhirgate.consents as consents
}

# Normalized consents.

rule(type, depth, names_actor, conds) := {"type": type, "depth": depth, "names_actor": names_actor, "conds": conds}

consent(id, patient, rules) := {"id": id, "patient": patient, "rules": rules}

actor(refs) := {"kind": "actor", "values": refs}

action(codes) := {"kind": "action", "values": codes}

# Patient/a permits Organization/o1 to access, as Consent/c1.
permit_o1 := {"Patient/a": {"Consent/c1": consent("Consent/c1", "Patient/a", [rule("permit", 0, true, [actor(["Organization/o1"]), action(["access"])])])}}

permits(patient, id, conds) := {id: consent(id, patient, [rule("permit", 0, true, conds)])}

denies(patient, id, conds) := {id: consent(id, patient, [rule("deny", 0, true, conds)])}

# ---------------------------------------------------------------------------
# Systems
# ---------------------------------------------------------------------------

test_system_v1_scope_reads if {
	d := decide(req(system([scope_v1("system", "*", "read")]), "read", obs("o1", ["Patient/a"])))
	d.allow
	not d.unconditional
	not d.break_glass
	d.reasons == ["scope system/*.read covers read of Observation"]
}

test_system_v2_scope_reads_its_type if {
	d := decide(req(system([scope("system", "Observation", "rs")]), "vread", obs("o1", ["Patient/a"])))
	d.allow
	d.reasons == ["scope system/Observation.rs covers vread of Observation"]
}

test_system_scope_of_other_type_denied if {
	d := decide(req(system([scope("system", "Patient", "rs")]), "read", obs("o1", ["Patient/a"])))
	not d.allow
	d.reasons == ["no scope covers read of Observation"]
}

test_system_read_scope_does_not_write if {
	d := decide(req(system([scope_v1("system", "*", "read")]), "update", obs("o1", ["Patient/a"])))
	not d.allow
	d.reasons == ["no scope covers update of Observation"]
}

test_system_v2_letters_are_checked if {
	not decide(req(system([scope("system", "*", "r")]), "search-type", of_type("Observation", true))).allow
	decide(req(system([scope("system", "*", "s")]), "search-type", of_type("Observation", true))).allow
	decide(req(system([scope("system", "*", "c")]), "create", obs("", ["Patient/a"]))).allow
	decide(req(system([scope("system", "*", "d")]), "delete", obs("o1", ["Patient/a"]))).allow
	not decide(req(system([scope("system", "*", "d")]), "update", obs("o1", ["Patient/a"]))).allow
}

test_system_type_level_is_unconditional if {
	d := decide(req(system([scope("system", "*", "rs")]), "search-type", of_type("Observation", true)))
	d.allow
	d.unconditional
	h := decide(req(system([scope("system", "*", "rs")]), "history-type", of_type("Observation", true)))
	h.unconditional
}

test_system_per_hit_check_is_not_unconditional if {
	d := decide(req(system([scope("system", "*", "rs")]), "search-type", obs("o1", ["Patient/a"])))
	d.allow
	not d.unconditional
}

test_system_ignores_user_and_patient_scopes if {
	d := decide(req(system([scope("user", "*", "cruds"), scope("patient", "*", "cruds")]), "read", obs("o1", ["Patient/a"])))
	not d.allow
}

test_system_needs_no_consent if {
	d := decide_with(req(system([scope("system", "*", "rs")]), "read", obs("o1", ["Patient/a"])), {"Patient/a": denies("Patient/a", "Consent/c9", [actor(["Organization/o1"])])})
	d.allow
}

# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------

test_erase_with_patient_delete_scope if {
	d := decide(op(system([scope("system", "Patient", "d")]), "erase"))
	d.allow
	d.reasons == ["scope system/Patient.d allows operation erase"]
}

test_erase_with_all_scope if {
	decide(op(system([scope_v1("system", "*", "*")]), "erase")).allow
}

test_erase_denied_without_delete if {
	d := decide(op(system([scope("system", "*", "rs"), scope("system", "Observation", "d")]), "erase"))
	not d.allow
	d.reasons == ["operation erase needs a system scope that covers delete of Patient"]
}

test_erase_denied_to_practitioner if {
	not decide(op(doc, "erase")).allow
}

test_erase_denied_to_patient if {
	not decide(op(patient_a([scope("patient", "*", "cruds")]), "erase")).allow
}

test_receipt_for_system_read if {
	d := decide(op(system([scope("system", "Patient", "r")]), "receipt"))
	d.allow
	d.reasons == ["scope system/Patient.r allows operation receipt"]
	decide(op(system([scope_v1("system", "*", "read")]), "receipt")).allow
	decide(op(system([scope("system", "AuditEvent", "rs")]), "receipt")).allow
}

test_receipt_denied_without_read_of_the_type if {
	d := decide(op(system([scope("system", "Observation", "rs"), scope("system", "Patient", "cud")]), "receipt"))
	not d.allow
	d.reasons == ["operation receipt needs a system scope that covers read of the type or of AuditEvent"]
	not decide(op(doc, "receipt")).allow
	not decide(op(patient_a([scope("patient", "*", "cruds")]), "receipt")).allow
}

test_admin_keys_needs_all_permissions if {
	decide(op(system([scope("system", "*", "cruds")]), "admin-keys")).allow
	decide(op(system([scope_v1("system", "*", "*")]), "admin-keys")).allow
	d := decide(op(system([scope("system", "*", "rs"), scope("system", "Patient", "cruds")]), "admin-keys"))
	not d.allow
	d.reasons == ["operation admin-keys needs the system scope system/*.cruds"]
}

test_admin_keys_denied_to_practitioner if {
	not decide(op(doctor([scope("user", "*", "cruds"), scope("system", "*", "cruds")]), "admin-keys")).allow
}

test_unknown_operation_denied if {
	d := decide(op(system([scope("system", "*", "cruds")]), "everything"))
	not d.allow
	d.reasons == ["operation \"everything\" is not supported"]
}

# ---------------------------------------------------------------------------
# Nobody
# ---------------------------------------------------------------------------

test_audit_event_update_and_delete_denied_to_all if {
	every act in ["update", "delete"] {
		d := decide(req(system([scope("system", "*", "cruds")]), act, res("AuditEvent", "e1", ["Patient/a"])))
		not d.allow
		sprintf("nobody may %s an AuditEvent", [act]) in d.reasons
	}
}

test_audit_event_read_and_create_allowed_to_system if {
	decide(req(system([scope("system", "*", "cruds")]), "read", res("AuditEvent", "e1", ["Patient/a"]))).allow
	decide(req(system([scope("system", "*", "cruds")]), "create", res("AuditEvent", "", ["Patient/a"]))).allow
}

test_other_kind_denied if {
	d := decide(req(subject("other", "RelatedPerson/r1", [scope("user", "*", "cruds")]), "read", obs("o1", ["Patient/a"])))
	not d.allow
	"subjects of kind \"other\" are not allowed" in d.reasons
}

test_no_scopes_denied if {
	d := decide(req(doctor([]), "read", practitioner_res("p2")))
	not d.allow
	d.reasons == ["no scope covers read of Practitioner"]
}

# ---------------------------------------------------------------------------
# Patients
# ---------------------------------------------------------------------------

test_patient_reads_own_data if {
	d := decide(req(patient_a([scope("patient", "Observation", "rs")]), "read", obs("o1", ["Patient/a"])))
	d.allow
	d.reasons == ["scope patient/Observation.rs covers read of Observation"]
}

test_patient_reads_own_data_with_user_scope_v1 if {
	decide(req(patient_a([scope_v1("user", "Observation", "read")]), "read", obs("o1", ["Patient/a"]))).allow
}

test_patient_reads_shared_resource if {
	decide(req(patient_a([scope("patient", "*", "rs")]), "read", res("Appointment", "ap1", ["Patient/b", "Patient/a"]))).allow
}

test_patient_denied_other_patients_data if {
	d := decide(req(patient_a([scope("patient", "*", "rs")]), "read", obs("o2", ["Patient/b"])))
	not d.allow
	d.reasons == ["Observation/o2 is not in the compartment of Patient/a"]
}

test_patient_denied_other_patient if {
	d := decide(req(patient_a([scope("patient", "*", "rs")]), "read", res("Patient", "b", ["Patient/b"])))
	not d.allow
}

test_patient_needs_covering_scope if {
	d := decide(req(patient_a([scope("patient", "Condition", "rs")]), "read", obs("o1", ["Patient/a"])))
	not d.allow
	d.reasons == ["no scope covers read of Observation"]
}

test_patient_scope_for_other_launch_patient_not_covering if {
	sub := object.union(patient_a([scope("patient", "*", "rs")]), {"patient": "Patient/b"})
	not decide(req(sub, "read", obs("o1", ["Patient/a"]))).allow

	# but the launch context may be the patient themselves
	self := object.union(patient_a([scope("patient", "*", "rs")]), {"patient": "Patient/a"})
	decide(req(self, "read", obs("o1", ["Patient/a"]))).allow
}

test_patient_search_of_compartment_type_is_filtered if {
	d := decide(req(patient_a([scope("patient", "*", "rs")]), "search-type", of_type("Observation", true)))
	d.allow
	not d.unconditional
}

test_patient_reads_non_compartment_types if {
	d := decide(req(patient_a([scope("patient", "*", "rs")]), "search-type", of_type("Practitioner", false)))
	d.allow
	d.unconditional
	decide(req(patient_a([scope("patient", "*", "rs")]), "read", practitioner_res("p1"))).allow
}

test_patient_writes_own_consent_and_appointment if {
	sub := patient_a([scope("patient", "*", "cruds")])
	decide(req(sub, "create", res("Consent", "", ["Patient/a"]))).allow
	decide(req(sub, "update", res("Consent", "c1", ["Patient/a"]))).allow
	decide(req(sub, "delete", res("Appointment", "ap1", ["Patient/a", "Patient/b"]))).allow
}

test_patient_denied_other_writes if {
	sub := patient_a([scope("patient", "*", "cruds")])
	d := decide(req(sub, "create", obs("", ["Patient/a"])))
	not d.allow
	d.reasons == ["patient Patient/a may only write Consent, Appointment, Communication and Subscription"]
	not decide(req(sub, "update", practitioner_res("p1"))).allow
	not decide(req(sub, "create", res("CommunicationRequest", "", ["Patient/a"]))).allow
}

test_patient_writes_own_communication if {
	sub := patient_a([scope("patient", "Communication", "cud")])
	d := decide(req(sub, "create", res("Communication", "", ["Patient/a", "Practitioner/p1"])))
	d.allow
	d.reasons == ["scope patient/Communication.cud covers create of Communication"]
	decide(req(sub, "update", res("Communication", "m1", ["Patient/b", "Patient/a"]))).allow
	decide(req(sub, "delete", res("Communication", "m1", ["Patient/a"]))).allow
}

test_patient_denied_writing_others_communication if {
	sub := patient_a([scope("patient", "*", "cruds")])
	d := decide(req(sub, "create", res("Communication", "", ["Patient/b"])))
	not d.allow
	d.reasons == ["Communication is not in the compartment of Patient/a"]

	# a Communication in no compartment (between practitioners) neither
	u := decide(req(sub, "update", res("Communication", "m2", [])))
	not u.allow
	u.reasons == ["Communication/m2 is not in the compartment of Patient/a"]
}

subscription(id) := {"type": "Subscription", "id": id, "compartments": [], "compartmentType": false}

test_patient_writes_subscription_with_scope if {
	d := decide(req(patient_a([scope("patient", "Subscription", "cruds")]), "create", subscription("")))
	d.allow
	d.reasons == ["scope patient/Subscription.cruds covers create of Subscription"]
	decide(req(patient_a([scope("patient", "*", "cud")]), "update", subscription("s1"))).allow
	decide(req(patient_a([scope("user", "Subscription", "d")]), "delete", subscription("s1"))).allow
}

test_patient_denied_subscription_without_scope if {
	d := decide(req(patient_a([scope("patient", "Communication", "cruds")]), "create", subscription("")))
	not d.allow
	d.reasons == ["no scope covers create of Subscription"]

	# a read scope does not cover writes
	u := decide(req(patient_a([scope("patient", "Subscription", "rs")]), "update", subscription("s1")))
	not u.allow
	u.reasons == ["no scope covers update of Subscription"]
}

test_patient_denied_writing_others_consent if {
	d := decide(req(patient_a([scope("patient", "*", "cruds")]), "update", res("Consent", "c2", ["Patient/b"])))
	not d.allow
	d.reasons == ["Consent/c2 is not in the compartment of Patient/a"]
}

test_patient_write_needs_write_scope if {
	d := decide(req(patient_a([scope("patient", "*", "rs")]), "create", res("Consent", "", ["Patient/a"])))
	not d.allow
	d.reasons == ["no scope covers create of Consent"]
}

# ---------------------------------------------------------------------------
# Practitioners: scopes
# ---------------------------------------------------------------------------

test_practitioner_non_compartment_type_by_scope_alone if {
	d := decide(req(doctor([scope("user", "Practitioner", "rs")]), "read", practitioner_res("p2")))
	d.allow
	not d.unconditional
	u := decide(req(doctor([scope("user", "Practitioner", "rs")]), "search-type", of_type("Practitioner", false)))
	u.allow
	u.unconditional
	w := decide(req(doctor([scope("user", "Practitioner", "cud")]), "update", practitioner_res("p2")))
	w.allow
}

test_practitioner_type_level_of_compartment_type_is_filtered if {
	d := decide(req(doc, "search-type", of_type("Observation", true)))
	d.allow
	not d.unconditional
}

test_practitioner_needs_user_scope if {
	d := decide_with(req(doctor([scope("system", "*", "cruds")]), "read", obs("o1", ["Patient/a"])), permit_o1)
	not d.allow
	"no scope covers read of Observation" in d.reasons
}

test_practitioner_patient_scope_for_launch_patient if {
	sub := object.union(doctor([scope("patient", "Observation", "rs")]), {"patient": "Patient/a"})
	d := decide_with(req(sub, "read", obs("o1", ["Patient/a"])), permit_o1)
	d.allow
	d.reasons == ["consent Consent/c1 permits", "scope patient/Observation.rs covers read of Observation"]
}

test_practitioner_patient_scope_not_for_other_patients if {
	sub := object.union(doctor([scope("patient", "Observation", "rs")]), {"patient": "Patient/b"})
	not decide_with(req(sub, "read", obs("o1", ["Patient/a"])), permit_o1).allow

	# every compartment must be the launch patient
	sub_a := object.union(doctor([scope("patient", "*", "rs")]), {"patient": "Patient/a"})
	not decide_with(req(sub_a, "read", res("Appointment", "ap1", ["Patient/a", "Patient/b"])), permit_o1).allow
}

test_practitioner_patient_scope_without_launch_patient if {
	not decide_with(req(doctor([scope("patient", "*", "rs")]), "read", obs("o1", ["Patient/a"])), permit_o1).allow
}

# ---------------------------------------------------------------------------
# Practitioners: consent
# ---------------------------------------------------------------------------

test_consent_permit_by_organization if {
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), permit_o1)
	d.allow
	not d.break_glass
	not d.unconditional
	d.reasons == ["consent Consent/c1 permits", "scope user/*.cruds covers read of Observation"]
}

test_consent_permit_by_practitioner if {
	consents := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Practitioner/p1"])])}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
}

test_consent_permit_by_role if {
	consents := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["PractitionerRole/r1"])])}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
}

test_no_consent_denied if {
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), {})
	not d.allow
	d.reasons == ["no active consent of Patient/a permits this"]
}

test_consent_of_other_actor_is_silent if {
	consents := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o2", "Practitioner/p9"])])}
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["no active consent of Patient/a permits this"]
}

test_consent_of_other_patient_does_not_count if {
	consents := {"Patient/b": permits("Patient/b", "Consent/c1", [actor(["Organization/o1"])])}
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
}

test_consent_deny if {
	consents := {"Patient/a": denies("Patient/a", "Consent/c2", [actor(["Practitioner/p1"])])}
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["consent Consent/c2 denies"]
}

test_consent_deny_across_consents if {
	consents := {"Patient/a": object.union(
		permits("Patient/a", "Consent/c1", [actor(["Organization/o1"])]),
		denies("Patient/a", "Consent/c2", [actor(["Practitioner/p1"]), action(["access"])]),
	)}
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["consent Consent/c2 denies"]
}

test_consent_period if {
	inside := {"kind": "period", "start_ns": y2026, "end_ns": y2027}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), inside])}).allow

	before := {"kind": "period", "start_ns": y2020, "end_ns": y2026}
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), before])}).allow

	after := {"kind": "period", "start_ns": y2027, "end_ns": null}
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), after])}).allow
}

test_consent_period_open_ends if {
	start_only := {"kind": "period", "start_ns": y2020}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), start_only])}).allow

	end_only := {"kind": "period", "start_ns": null, "end_ns": y2030}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), end_only])}).allow
}

test_consent_period_bounds if {
	# start is inclusive, end exclusive
	at_start := {"kind": "period", "start_ns": now, "end_ns": y2030}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), at_start])}).allow

	at_end := {"kind": "period", "start_ns": y2020, "end_ns": now}
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), at_end])}).allow
}

test_consent_action if {
	consents := permit_o1 # access only
	decide_with(req(doc, "search-type", obs("o1", ["Patient/a"])), consents).allow
	d := decide_with(req(doc, "update", obs("o1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["no active consent of Patient/a permits this"]

	correct := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), action(["correct"])])}
	decide_with(req(doc, "create", obs("", ["Patient/a"])), correct).allow
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), correct).allow

	use := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), action(["use"])])}
	decide_with(req(doc, "history-instance", obs("o1", ["Patient/a"])), use).allow
}

test_consent_purpose if {
	consents := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), {"kind": "purpose", "values": ["TREAT"]}])}
	treat := object.union(doc, {"purposeOfUse": "TREAT"})
	decide_with(req(treat, "read", obs("o1", ["Patient/a"])), consents).allow
	hpaym := object.union(doc, {"purposeOfUse": "HPAYMT"})
	not decide_with(req(hpaym, "read", obs("o1", ["Patient/a"])), consents).allow

	# no purpose in the token: the condition never holds
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
}

test_consent_class if {
	consents := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), {"kind": "class", "values": ["Observation", "Condition"]}])}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
	not decide_with(req(doc, "read", res("MedicationRequest", "m1", ["Patient/a"])), consents).allow
}

test_consent_data if {
	consents := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), {"kind": "data", "values": ["Observation/o1"]}])}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
	not decide_with(req(doc, "read", obs("o2", ["Patient/a"])), consents).allow
}

test_nested_deny_overrides_permit if {
	# permit Organization/o1 to access, except MedicationRequests
	consents := {"Patient/a": {"Consent/c1": consent("Consent/c1", "Patient/a", [
		rule("permit", 0, true, [actor(["Organization/o1"]), action(["access"])]),
		rule("deny", 1, true, [actor(["Organization/o1"]), action(["access"]), {"kind": "class", "values": ["MedicationRequest"]}]),
	])}}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
	d := decide_with(req(doc, "read", res("MedicationRequest", "m1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["consent Consent/c1 denies"]
}

test_nested_permit_overrides_deny if {
	# deny everyone in Organization/o1, except Practitioner/p1 reading Observations
	consents := {"Patient/a": {"Consent/c1": consent("Consent/c1", "Patient/a", [
		rule("deny", 0, true, [actor(["Organization/o1"])]),
		rule("permit", 1, true, [actor(["Organization/o1"]), actor(["Practitioner/p1"]), {"kind": "class", "values": ["Observation"]}]),
	])}}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
	not decide_with(req(doc, "read", res("Condition", "x1", ["Patient/a"])), consents).allow
	other := object.union(doc, {"fhirUser": "Practitioner/p2"})
	not decide_with(req(other, "read", obs("o1", ["Patient/a"])), consents).allow
}

test_deny_wins_at_equal_depth if {
	consents := {"Patient/a": {"Consent/c1": consent("Consent/c1", "Patient/a", [
		rule("permit", 0, false, []),
		rule("permit", 1, true, [actor(["Organization/o1"])]),
		rule("deny", 1, true, [actor(["Practitioner/p1"])]),
	])}}
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["consent Consent/c1 denies"]
}

test_consent_naming_no_actor_is_silent if {
	# a consent that names no actor grants nobody anything...
	open_permit := {"Patient/a": {"Consent/c1": consent("Consent/c1", "Patient/a", [rule("permit", 0, false, [action(["access"])])])}}
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), open_permit).allow

	# ...and is not an explicit deny either
	open_deny := {"Patient/a": object.union(
		{"Consent/c0": consent("Consent/c0", "Patient/a", [rule("deny", 0, false, [])])},
		permits("Patient/a", "Consent/c1", [actor(["Organization/o1"])]),
	)}
	decide_with(req(doc, "read", obs("o1", ["Patient/a"])), open_deny).allow
}

test_names_actor_is_inherited if {
	# the root names Organization/o1; the nested deny of Observations
	# names no actor itself, but speaks for the root's actor
	consents := {"Patient/a": {"Consent/c1": consent("Consent/c1", "Patient/a", [
		rule("permit", 0, true, [actor(["Organization/o1"])]),
		rule("deny", 1, true, [actor(["Organization/o1"]), {"kind": "class", "values": ["Observation"]}]),
	])}}
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["consent Consent/c1 denies"]
}

test_deciding_rule_without_actor_makes_consent_silent if {
	# the deepest holding rule (depth 1, no actor on its path) decides, so
	# the consent is silent although its actor rule (depth 1) permits
	consents := {"Patient/a": {"Consent/c1": consent("Consent/c1", "Patient/a", [
		rule("permit", 0, false, []),
		rule("permit", 1, true, [actor(["Organization/o1"])]),
		rule("deny", 1, false, [{"kind": "class", "values": ["Observation"]}]),
	])}}
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["no active consent of Patient/a permits this"]
	decide_with(req(doc, "read", res("Condition", "x1", ["Patient/a"])), consents).allow
}

test_unsupported_never_holds_on_permit if {
	consents := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), {"kind": "unsupported", "what": "securityLabel"}])}
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents).allow
}

test_unsupported_always_holds_on_deny if {
	consents := {"Patient/a": object.union(
		permits("Patient/a", "Consent/c1", [actor(["Organization/o1"])]),
		denies("Patient/a", "Consent/c2", [actor(["Organization/o1"]), {"kind": "unsupported", "what": "code"}]),
	)}
	d := decide_with(req(doc, "read", obs("o1", ["Patient/a"])), consents)
	not d.allow
	d.reasons == ["consent Consent/c2 denies"]
}

test_unknown_condition_kind_fails_closed if {
	permit := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), {"kind": "future"}])}
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), permit).allow
	deny := {"Patient/a": object.union(
		permits("Patient/a", "Consent/c1", [actor(["Organization/o1"])]),
		denies("Patient/a", "Consent/c2", [actor(["Organization/o1"]), {"kind": "future"}]),
	)}
	not decide_with(req(doc, "read", obs("o1", ["Patient/a"])), deny).allow
}

test_consent_needed_for_writes_too if {
	consents := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"]), action(["correct", "collect"])])}
	decide_with(req(doc, "create", obs("", ["Patient/a"])), consents).allow
	decide_with(req(doc, "delete", obs("o1", ["Patient/a"])), consents).allow
	not decide_with(req(doc, "create", obs("", ["Patient/b"])), consents).allow
}

test_multi_compartment_needs_every_patient if {
	both := {
		"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"])]),
		"Patient/b": permits("Patient/b", "Consent/c2", [actor(["Practitioner/p1"])]),
	}
	d := decide_with(req(doc, "read", res("Appointment", "ap1", ["Patient/a", "Patient/b"])), both)
	d.allow
	d.reasons == ["consent Consent/c1 permits", "consent Consent/c2 permits", "scope user/*.cruds covers read of Appointment"]

	only_a := {"Patient/a": permits("Patient/a", "Consent/c1", [actor(["Organization/o1"])])}
	e := decide_with(req(doc, "read", res("Appointment", "ap1", ["Patient/a", "Patient/b"])), only_a)
	not e.allow
	e.reasons == ["no active consent of Patient/b permits this"]
}

test_resource_without_compartment_needs_no_consent if {
	decide_with(req(doc, "create", obs("", [])), {}).allow
}

# ---------------------------------------------------------------------------
# Break-glass
# ---------------------------------------------------------------------------

etreat := object.union(doc, {"purposeOfUse": "ETREAT"})

test_break_glass_without_consent if {
	d := decide_with(req(etreat, "read", obs("o1", ["Patient/a"])), {})
	d.allow
	d.break_glass
	d.reasons == ["break-glass: purposeOfUse ETREAT", "scope user/*.cruds covers read of Observation"]
}

test_break_glass_against_consent if {
	consents := {"Patient/a": denies("Patient/a", "Consent/c2", [actor(["Practitioner/p1"])])}
	d := decide_with(req(etreat, "read", obs("o1", ["Patient/a"])), consents)
	d.allow
	d.break_glass
}

test_break_glass_not_needed_when_consent_permits if {
	d := decide_with(req(etreat, "read", obs("o1", ["Patient/a"])), permit_o1)
	d.allow
	not d.break_glass
}

test_break_glass_needs_covering_scope if {
	sub := object.union(doctor([scope("user", "Condition", "rs")]), {"purposeOfUse": "ETREAT"})
	d := decide_with(req(sub, "read", obs("o1", ["Patient/a"])), {})
	not d.allow
	not d.break_glass
}

test_break_glass_with_patient_scope if {
	sub := object.union(doctor([scope("patient", "*", "rs")]), {"purposeOfUse": "ETREAT", "patient": "Patient/a"})
	d := decide_with(req(sub, "read", obs("o1", ["Patient/a"])), {})
	d.allow
	d.break_glass
}

test_break_glass_only_for_practitioners if {
	sub := object.union(patient_a([scope("patient", "*", "rs")]), {"purposeOfUse": "ETREAT"})
	not decide(req(sub, "read", obs("o2", ["Patient/b"]))).allow
}

test_break_glass_does_not_open_audit_event_changes if {
	d := decide_with(req(etreat, "delete", res("AuditEvent", "e1", ["Patient/a"])), {})
	not d.allow
}

test_other_purpose_is_not_break_glass if {
	sub := object.union(doc, {"purposeOfUse": "TREAT"})
	not decide_with(req(sub, "read", obs("o1", ["Patient/a"])), {}).allow
}

# ---------------------------------------------------------------------------
# Extension points
# ---------------------------------------------------------------------------

test_consent_waived_lifts_the_consent_requirement if {
	d := authz.decision with input as req(doc, "read", obs("o1", ["Patient/a"]))
		with data.fhirgate.consents as {}
		with authz.consent_waived as true
	d.allow
	not d.break_glass
	d.reasons == ["scope user/*.cruds covers read of Observation"]
}

test_consent_waived_does_not_lift_scopes if {
	d := authz.decision with input as req(doctor([]), "read", obs("o1", ["Patient/a"]))
		with data.fhirgate.consents as {}
		with authz.consent_waived as true
	not d.allow
	d.reasons == ["no scope covers read of Observation"]
}
