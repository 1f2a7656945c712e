//! Anonymization: every PII type is found in realistic messages and replaced by
//! a typed placeholder that is consistent across a record; look-alikes stay.

use chrono::{TimeZone, Utc};
use promptloop::config::CustomPattern;
use promptloop::logs::anonymize::{Anonymizer, PiiCounts};
use promptloop::logs::{Feedback, LogRecord};
use serde_json::{Map, Value, json};

fn anonymizer() -> Anonymizer {
    Anonymizer::new(&[]).unwrap()
}

/// (label, matched text) for every finding.
fn found(text: &str) -> Vec<(String, String)> {
    anonymizer()
        .find(text)
        .into_iter()
        .map(|finding| (finding.kind.label().to_string(), text[finding.range].to_string()))
        .collect()
}

fn assert_found(text: &str, label: &str, value: &str) {
    assert_eq!(found(text), vec![(label.to_string(), value.to_string())], "in {text:?}");
}

fn assert_clean(text: &str) {
    assert_eq!(found(text), vec![], "nothing should be found in {text:?}");
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn record(message: &str) -> LogRecord {
    LogRecord {
        id: "req-1".into(),
        timestamp: Utc.with_ymd_and_hms(2024, 5, 1, 9, 30, 0).unwrap(),
        inputs: object(json!({ "message": message })),
        output: None,
        reference: None,
        feedback: None,
        history: vec![],
        metadata: Map::new(),
    }
}

#[test]
fn emails() {
    for email in ["jane.doe@example.com", "J.Smith+bank@mail.co.uk", "kundenservice@beispiel-bank.de"] {
        assert_found(&format!("Please send the statement to {email}, thanks."), "EMAIL", email);
    }
}

#[test]
fn phone_numbers() {
    for phone in [
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "+1-780-563-6083x7783",
        "020 7946 0958",
        "07700 900123",
        "+44 (0)121 496 0000",
        "030 12345678",
        "0151 23456789",
        "+49 (0) 9141 777631",
        "01 23 45 67 89",
        "+33 6 95 36 62 58",
        "+34 948 812 415",
        "+39 3207406811",
        "+31(0)83-4497869",
    ] {
        assert_found(&format!("You can reach me on {phone} after 5pm."), "PHONE", phone);
    }
    // A reference word earlier in the message does not make a later number an identifier.
    assert_found("Where is my card PIN? 0978-079712 is my mobile", "PHONE", "0978-079712");
    assert_clean("Transaction reference 0978-079712 is wrong");
}

#[test]
fn card_numbers_are_luhn_checked() {
    for card in ["4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444", "378282246310005", "180002020985865"]
    {
        assert_found(&format!("My card {card} was declined at the shop"), "CARD", card);
    }
    assert_clean("My card 4111 1111 1111 1112 was declined at the shop");
    assert_clean("Transfer id 1234567890123456 is still pending");
    // Twelve Luhn-valid digits are a Maestro card only where nothing calls them a reference.
    assert_found("Maestro 567440234126 was declined", "CARD", "567440234126");
    assert_clean("Transaction reference 567440234126 shows twice");
}

#[test]
fn ibans_valid_or_mistyped_are_account_numbers() {
    for iban in [
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82 WEST 1234 5698 7654 32",
        "NL91ABNA0417164300",
        // A failing check or a lost character is a typo, not a reason to keep a person's account number.
        "DE88 3704 0044 0532 0130 00",
        "DE88370400440532013000",
        "GB29 NWBK 6016 1331 9268 1",
        "GB29NWBK6016133192681",
        "NL91ABNA041716430",
    ] {
        assert_found(&format!("Please refund to {iban} as soon as possible."), "IBAN", iban);
    }
    // Bank codes and short codes are not accounts.
    for text in ["Is DEUTDEFF500 the right BIC?", "Parcel RR123456789GB is late", "Ref DE12 3456 is fine"] {
        assert_clean(text);
    }
}

#[test]
fn ip_addresses() {
    assert_found("The login came from 203.0.113.45, not me", "IP", "203.0.113.45");
    assert_found("Blocked IP 2001:db8:85a3::8a2e:370:7334 tried again", "IP", "2001:db8:85a3::8a2e:370:7334");
    assert_found("Seen at fe80::1ff:fe23:4567:890a.", "IP", "fe80::1ff:fe23:4567:890a");
    assert_clean("It says 999.1.1.1 in the log");
    assert_clean("Upgraded from 1.2.3.4.5 to the new app");
    assert_clean("The meeting is at 12:30:45 tomorrow");
}

#[test]
fn social_security_numbers() {
    assert_found("My SSN is 123-45-6789 if you need it", "SSN", "123-45-6789");
    assert_found("social security number 123 45 6789", "SSN", "123 45 6789");
    for invalid in ["000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000"] {
        assert_clean(&format!("My SSN is {invalid} if you need it"));
    }
}

#[test]
fn urls_with_credentials_or_tokens() {
    for url in [
        "https://admin:hunter2@internal.example.com/reports",
        "https://bank.example.com/reset?user=jo&token=a8f5f167f44f4964e6c998dee827110c",
        "https://files.example.net/statement.pdf?X-Amz-Signature=abc123def456&X-Amz-Expires=600",
        "postgres://app:s3cret@db.internal:5432/ledger",
    ] {
        assert_found(&format!("The link {url} does not open."), "URL", url);
    }
    assert_clean("See https://www.example.com/help/cards?lang=en for details.");
}

#[test]
fn api_keys_and_tokens() {
    for key in [
        "AKIAIOSFODNN7EXAMPLE",
        "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",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "glpat-xxxxxxxxxxxxxxxxxxxx",
        "glpat-JDwW6cQ6Qrp27PvXdjO-",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ] {
        assert_found(&format!("Our integration uses {key} for the webhook."), "SECRET", key);
    }
    assert_found("Authorization: Bearer 0123abcdXYZ.tok-en_value", "SECRET", "0123abcdXYZ.tok-en_value");
    assert_found("config has api_key=ab12cd34ef56 in it", "SECRET", "ab12cd34ef56");
    assert_found("secret: \"Zx9-Qw8_Lp7\"", "SECRET", "Zx9-Qw8_Lp7");
    assert_clean("The secret: nothing works and my token expired");
}

#[test]
fn look_alikes_are_left_alone() {
    for text in [
        "I was charged twice on 2024-01-15 at 12:30:45, £1,234.56 in total.",
        "Order #123456 never arrived and the app is on version 1.2.3.",
        "Why did my top up of €2.500,00 fail on 15/01/2024?",
        "Tracking number 9400111202555842761234 shows nothing",
        "My balance went from 1,250,000.00 to 0 overnight",
        "Exchange rate was 1.0845 on 03.02.2024",
        "Card ending 4444 was charged 3 times",
    ] {
        assert_clean(text);
    }
}

#[test]
fn a_record_gets_consistent_placeholders_in_every_field() {
    let anonymizer = anonymizer();
    let mut record = record("I am Jane.Doe@Example.com, call me on 555-123-4567 or +44 20 7946 0958");
    record.output = Some(object(json!({ "reply": "We wrote to jane.doe@example.com" })));
    record.reference = Some(object(json!({ "queue": "cards", "note": "contact (555) 123-4567" })));
    record.feedback =
        Some(Feedback { score: Some(0.0), comment: Some("mailed bob@example.org and jane.doe@example.com".into()) });
    record.history = vec!["my card 4111 1111 1111 1111 got stuck".into(), "it was 4111-1111-1111-1111".into()];
    record.metadata = object(json!({
        "user": { "email": "jane.doe@example.com", "ips": ["203.0.113.45", 7] },
        "jane.doe@example.com": "a key is anonymized too",
    }));
    let mut counts = PiiCounts::default();
    anonymizer.anonymize_record(&mut record, &mut counts);

    assert_eq!(record.id, "req-1");
    assert_eq!(record.timestamp, Utc.with_ymd_and_hms(2024, 5, 1, 9, 30, 0).unwrap());
    assert_eq!(record.inputs["message"], "I am <EMAIL_1>, call me on <PHONE_1> or <PHONE_2>");
    assert_eq!(record.output.as_ref().unwrap()["reply"], "We wrote to <EMAIL_1>");
    assert_eq!(record.reference.as_ref().unwrap()["note"], "contact <PHONE_1>");
    assert_eq!(record.reference.as_ref().unwrap()["queue"], "cards");
    assert_eq!(record.feedback.as_ref().unwrap().comment.as_deref(), Some("mailed <EMAIL_2> and <EMAIL_1>"));
    assert_eq!(record.history, vec!["my card <CARD_1> got stuck", "it was <CARD_1>"]);
    assert_eq!(record.metadata["user"], json!({ "email": "<EMAIL_1>", "ips": ["<IP_1>", 7] }));
    assert_eq!(record.metadata["<EMAIL_1>"], "a key is anonymized too");
    assert!(!record.metadata.contains_key("jane.doe@example.com"));

    assert_eq!(counts.get("EMAIL"), 6);
    assert_eq!(counts.get("PHONE"), 3);
    assert_eq!(counts.get("CARD"), 2);
    assert_eq!(counts.get("IP"), 1);
    assert_eq!(counts.total(), 12);
    let labels: Vec<&str> = counts.iter().map(|(label, _)| label).collect();
    assert_eq!(labels, vec!["CARD", "EMAIL", "IP", "PHONE"]);
    assert_eq!(serde_json::to_value(&counts).unwrap(), json!({ "CARD": 2, "EMAIL": 6, "IP": 1, "PHONE": 3 }));
}

#[test]
fn numbering_starts_again_for_each_record() {
    let anonymizer = anonymizer();
    let mut counts = PiiCounts::default();
    let mut first = record("write to a@example.com or b@example.com");
    let mut second = record("write to b@example.com");
    anonymizer.anonymize_record(&mut first, &mut counts);
    anonymizer.anonymize_record(&mut second, &mut counts);
    assert_eq!(first.inputs["message"], "write to <EMAIL_1> or <EMAIL_2>");
    assert_eq!(second.inputs["message"], "write to <EMAIL_1>");
    assert_eq!(counts.get("EMAIL"), 3);
}

#[test]
fn anonymizing_twice_changes_nothing_more() {
    let anonymizer = anonymizer();
    let mut counts = PiiCounts::default();
    let mut once = record("SSN 123-45-6789, IBAN DE89 3704 0044 0532 0130 00, ip 10.0.0.12, key AKIAIOSFODNN7EXAMPLE");
    anonymizer.anonymize_record(&mut once, &mut counts);
    assert_eq!(once.inputs["message"], "SSN <SSN_1>, IBAN <IBAN_1>, ip <IP_1>, key <SECRET_1>");
    let mut twice = once.clone();
    let mut more = PiiCounts::default();
    anonymizer.anonymize_record(&mut twice, &mut more);
    assert_eq!(twice, once);
    assert!(more.is_empty());
}

#[test]
fn custom_patterns_come_first_and_are_named() {
    let custom = [CustomPattern { name: "ORDER_ID".into(), regex: r"\bORD-\d{8}\b".into() }];
    let anonymizer = Anonymizer::new(&custom).unwrap();
    let mut record = record("Order ORD-12345678 and ORD-87654321, again ORD-12345678, mail me at x@y.io");
    let mut counts = PiiCounts::default();
    anonymizer.anonymize_record(&mut record, &mut counts);
    assert_eq!(
        record.inputs["message"],
        "Order <ORDER_ID_1> and <ORDER_ID_2>, again <ORDER_ID_1>, mail me at <EMAIL_1>"
    );
    assert_eq!(counts.get("ORDER_ID"), 3);
    assert_eq!(counts.get("EMAIL"), 1);
}

#[test]
fn a_custom_pattern_that_does_not_compile_is_named_in_the_error() {
    let custom = [CustomPattern { name: "TICKET".into(), regex: r"TCK-(\d+".into() }];
    let error = Anonymizer::new(&custom).err().expect("an unclosed group must not compile");
    let message = format!("{error:#}");
    assert!(message.contains("TICKET"), "{message}");
    assert!(message.contains("[anonymize]"), "{message}");
}

#[test]
fn counts_add_up() {
    let mut total = PiiCounts::default();
    let mut a = PiiCounts::default();
    a.record("EMAIL", 2);
    let mut b = PiiCounts::default();
    b.record("EMAIL", 1);
    b.record("SECRET", 4);
    total.add(&a);
    total.add(&b);
    assert_eq!(total.get("EMAIL"), 3);
    assert_eq!(total.get("SECRET"), 4);
    assert_eq!(total.get("PHONE"), 0);
    assert_eq!(total.total(), 7);
}

#[test]
fn url_credentials_win_over_the_email_inside() {
    let text = "clone https://deploy:pa55word@git.example.com/bank/app.git please";
    assert_found(text, "URL", "https://deploy:pa55word@git.example.com/bank/app.git");
}

#[test]
fn several_types_in_one_message_are_in_order() {
    let text = "Card 4111 1111 1111 1111, mail a.b@example.com, phone +44 20 7946 0958, from 198.51.100.7";
    let labels: Vec<String> = found(text).into_iter().map(|(label, _)| label).collect();
    assert_eq!(labels, vec!["CARD", "EMAIL", "PHONE", "IP"]);
}

#[test]
fn numbers_logged_as_json_numbers_are_read_with_their_key() {
    let mut r = record("Call me back please");
    r.metadata = object(json!({
        "phone": 4155550123u64,
        "card": 4111111111111111u64,
        "customer": {"mobile": 447700900123u64},
        "latency_ms": 355,
        "prompt_tokens": 1234567,
        "order": 73946021
    }));
    let mut counts = PiiCounts::default();
    anonymizer().anonymize_record(&mut r, &mut counts);
    assert_eq!(r.metadata["phone"], "<PHONE_1>");
    assert_eq!(r.metadata["card"], "<CARD_1>");
    assert_eq!(r.metadata["customer"]["mobile"], "<PHONE_2>");
    assert_eq!(r.metadata["latency_ms"], 355);
    assert_eq!(r.metadata["prompt_tokens"], 1234567);
    assert_eq!(r.metadata["order"], 73946021);
    assert_eq!(counts.total(), 3);
}

#[test]
fn names_people_give_themselves_are_replaced() {
    let a = anonymizer();
    let mut counts = PiiCounts::default();
    let cases = [
        ("Help! My name is John Patel, please call me", "Help! My name is <NAME_1>, please call me"),
        ("my name's Ana María López and my card is gone", "my name's <NAME_1> and my card is gone"),
        ("Thanks for nothing. Regards, Sam O'Neill", "Thanks for nothing. Regards, <NAME_1>"),
        ("Mr. Okafor here, where is my refund?", "Mr. <NAME_1> here, where is my refund?"),
        ("Dr Jane Smith-Jones asked me to write", "Dr <NAME_1> asked me to write"),
    ];
    for (text, expected) in cases {
        assert_eq!(a.anonymize_text(text, &mut counts), expected);
    }
    assert_eq!(counts.get("NAME"), 5);
    // Without a cue a capitalized word is not a name.
    for text in ["My Card Is Not Working", "Regards, and thanks", "My name is on the card", "I paid Amazon twice"] {
        assert_clean(text);
    }
}

#[test]
fn an_id_holding_pii_or_a_secret_is_replaced_whole_by_a_stable_hash() {
    let anonymizer = anonymizer();
    for id in ["jane.doe@example.com", "sk-proj-Q7vX2mN9pL4kR8tY1wZ6bC3dF5gH0jAs", "+44 20 7946 0958"] {
        let mut r = record("hello");
        r.id = id.to_string();
        let mut counts = PiiCounts::default();
        anonymizer.anonymize_record(&mut r, &mut counts);
        assert_eq!(r.id, promptloop::logs::anonymize::anonymous_id(id, &r.timestamp), "{id}");
        assert!(r.id.starts_with("anon-") && !r.id.contains(&id[..6]), "{id} became {}", r.id);
        assert_eq!(counts.total(), 1, "{id}");
        // The same line anonymized again gives the same id.
        let mut again = record("hello");
        again.id = id.to_string();
        anonymizer.anonymize_record(&mut again, &mut PiiCounts::default());
        assert_eq!(again.id, r.id);
    }
    for id in
        ["req-1", "chatcmpl-9pX3aBcDeFgHiJkLmNoPqRsTuVw", "5b8efff798038103", "123e4567-e89b-12d3-a456-426614174000"]
    {
        let mut r = record("hello");
        r.id = id.to_string();
        anonymizer.anonymize_record(&mut r, &mut PiiCounts::default());
        assert_eq!(r.id, id);
    }
}

#[test]
fn keys_of_inputs_outputs_and_references_are_anonymized() {
    let mut r = record("hi");
    r.inputs.insert("jane.doe@example.com".into(), json!("cc"));
    r.inputs.insert("nested".into(), json!({ "AKIAIOSFODNN7EXAMPLE": { "+44 20 7946 0958": 1 } }));
    r.output =
        Some(object(json!({ "queue": "cards", "sent to JANE.DOE@example.com": true, "Jane.Doe@Example.com": 2 })));
    r.reference = Some(object(json!({ "queue": "cards", "bob@example.org": "x" })));
    let mut counts = PiiCounts::default();
    anonymizer().anonymize_record(&mut r, &mut counts);
    let keys = |map: &Map<String, Value>| map.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&r.inputs), vec!["message", "<EMAIL_1>", "nested"]);
    assert_eq!(r.inputs["nested"], json!({ "<SECRET_1>": { "<PHONE_1>": 1 } }));
    // Two keys that become the same placeholder keep both values, in order.
    assert_eq!(keys(r.output.as_ref().unwrap()), vec!["queue", "sent to <EMAIL_1>", "<EMAIL_1>"]);
    let mut r2 = record("hi");
    r2.metadata = object(json!({ "a@example.com": 1, "A@example.com": 2 }));
    anonymizer().anonymize_record(&mut r2, &mut PiiCounts::default());
    assert_eq!(r2.metadata, object(json!({ "<EMAIL_1>": 1, "<EMAIL_1>_2": 2 })));
    assert_eq!(keys(r.reference.as_ref().unwrap()), vec!["queue", "<EMAIL_2>"]);
    assert_eq!(counts.get("EMAIL"), 4);
    assert_eq!(counts.get("SECRET"), 1);
    assert_eq!(counts.get("PHONE"), 1);
}

#[test]
fn numbers_in_arrays_floats_and_negatives_are_read_like_other_numbers() {
    let mut r = record("see the fields");
    r.inputs.insert("phones".into(), json!([4155550123u64, "4155550124", { "mobile": 447700900123u64 }]));
    r.inputs.insert("card".into(), json!(4111111111111111.0));
    r.inputs.insert("refund_card".into(), json!(-5555555555554444i64));
    r.inputs.insert("cards".into(), json!([[378282246310005u64], -4111111111111111.0]));
    r.inputs.insert("amounts".into(), json!([1234567.5, -2500000, 4111111111111112u64]));
    let mut counts = PiiCounts::default();
    anonymizer().anonymize_record(&mut r, &mut counts);
    assert_eq!(r.inputs["phones"], json!(["<PHONE_1>", "<PHONE_2>", { "mobile": "<PHONE_3>" }]));
    assert_eq!(r.inputs["card"], "<CARD_1>");
    assert_eq!(r.inputs["refund_card"], "<CARD_2>");
    assert_eq!(r.inputs["cards"], json!([["<CARD_3>"], "<CARD_1>"]));
    // Amounts and a number that fails the Luhn check stay numbers.
    assert_eq!(r.inputs["amounts"], json!([1234567.5, -2500000, 4111111111111112u64]));
    assert_eq!(counts.total(), 7);

    // Ids and sizes of ten digits are not phones: a JSON number is one only
    // under a phone key, a string of digits is read with its key's words.
    let mut r = record("see the fields");
    r.inputs = object(json!({
        "user_id": 2847561234u64,
        "orderId": "4155550123",
        "bytes": 3456789012u64,
        "callbackNumber": 4155550123u64,
        "contact": "4155550124",
    }));
    anonymizer().anonymize_record(&mut r, &mut PiiCounts::default());
    assert_eq!(
        r.inputs,
        object(json!({
            "user_id": 2847561234u64,
            "orderId": "4155550123",
            "bytes": 3456789012u64,
            "callbackNumber": "<PHONE_1>",
            "contact": "<PHONE_2>",
        }))
    );
}

#[test]
fn card_numbers_written_as_floats_or_negative_in_text() {
    assert_found("card: 4111111111111111.0 declined", "CARD", "4111111111111111");
    assert_found("refund to -4111111111111111 failed", "CARD", "4111111111111111");
    assert_clean("total 4111111111111111.37 is odd");
}

#[test]
fn jwts_whose_payload_does_not_start_with_ey_j() {
    for jwt in [
        // `\n{"sub":...}` and opaque bytes as the payload.
        "eyJhbGciOiAiSFMyNTYiLCAidHlwIjogIkpXVCJ9.CnsidXNlciI6MTIzNH0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJhbGciOiJSUzI1NiJ9.q83v3wTl6W0Zk8jRvVQ-_Rj8mG9xk2pA.Qm9fY2hpY2tlbi1zaWduYXR1cmUtYnl0ZXM",
    ] {
        assert_found(&format!("Is {jwt} still valid?"), "SECRET", jwt);
    }
    // A full stop after a token is the sentence's.
    assert_found(
        "Logs show eyJhbGciOiJub25lIn0.YWJjZGVmZ2g.c2lnbmF0dXJl.",
        "SECRET",
        "eyJhbGciOiJub25lIn0.YWJjZGVmZ2g.c2lnbmF0dXJl",
    );
    // An unsigned token is found without its empty signature; nothing of it is left.
    assert_found(
        "Is eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0In0. valid?",
        "SECRET",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0In0",
    );
}

#[test]
fn more_key_formats() {
    for key in [
        "hf_MwHdKxLJ5KOSJOYNPKcGCkMX7h09goZsmDpR",
        "npm_5VeRW8sSZRMqC9wtX5jnDEPmSKuteHJXrRK5",
        "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",
        "sk-ant-api03-Zx9Qw8Lp7Zx9Qw8Lp7Zx9Qw8Lp7Zx9Qw8Lp7-AA",
    ] {
        assert_found(&format!("I pasted {key} by mistake, please revoke it"), "SECRET", key);
    }
}

#[test]
fn national_phone_numbers_without_a_country_code_or_a_phone_word() {
    for phone in ["980-564-9525", "431.902.6254x8625", "732 126 587", "+55 74 6142-9770", "3779726372", "043414306"] {
        for lead in ["It's {} now", "Details: {}", "or {}, thanks", "Customer gave {} as callback"] {
            assert_found(&lead.replace("{}", phone), "PHONE", phone);
        }
    }
    // After a receipt mentioned earlier, "It's" does not make the number a reference.
    assert_found("I have no receipt. It's 5673953140!", "PHONE", "5673953140");
    assert_found("I used the wrong account number! 727 849 729 (after 6pm)", "PHONE", "727 849 729");
    // "transferring" holds "ring", which is no reason to call an order number a phone.
    assert_clean("before transferring? Order no. 1053246713 from 14.11.2026 is still open.");
    for amount in
        ["I moved 123 456 789 EUR", "It cost €732 126 587", "I moved 1 234 567 euros", "I have 2500000000 points"]
    {
        assert_clean(amount);
    }
}

#[test]
fn maestro_numbers_of_twelve_digits() {
    assert_found("Card no. 503830900240 please cancel", "CARD", "503830900240");
    assert_found("Please block 060456353378 immediately", "CARD", "060456353378");
    assert_clean("Transaction reference 503830900240 shows twice");
}

#[test]
fn a_card_right_after_an_amount() {
    assert_found("I was charged £154.80 4111 1111 1111 1111 yesterday", "CARD", "4111 1111 1111 1111");
    assert_found("I was charged $810.59 583688873822, thanks", "CARD", "583688873822");
    assert_found("I was charged ¥881.34 38916538841761!", "CARD", "38916538841761");
}

#[test]
fn versions_dates_and_rates_are_not_phones_or_addresses() {
    for text in [
        "Updated to 9.9.6 (8/12/2026) and it still crashes",
        "Build 8.3.7.143 of the app logs me out",
        "version 10.0.19045.2006 is installed",
        "Exchange rate 154.8756 on 01.01.2025, fee 7.52%",
        "v2.14.3 (2026-08-12) broke the login",
        "The transfer at 2026-08-12T14:32:05Z is missing",
    ] {
        assert_clean(text);
    }
}
