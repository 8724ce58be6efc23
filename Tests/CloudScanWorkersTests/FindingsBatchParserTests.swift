import CloudScanCore
import CloudScanInbound
import CloudScanTestSupport
import CloudScanWorkers
import Foundation
import Testing

/// The writer's one-pass check of findings.batch.v1 against the published JSON Schema, judged by
/// an outside implementation (Python's jsonschema): both must agree on every document.
@Suite("findings.batch.v1 check")
struct FindingsBatchParserTests {
    static let scan = UUID().uuidString.lowercased()
    static let org = UUID().uuidString.lowercased()

    static func document(envelope: String = "", finding: String) -> String {
        let base =
            #""scan_id":"\#(scan)","organization_id":"\#(org)","attempt":1,"batch_index":0,"runner_token":"v1.t""#
        return "{\(envelope.isEmpty ? base : envelope),\"findings\":[\(finding)]}"
    }

    static let good = #"{"scanner":"semgrep","rule_id":"r1","severity":"high","title":"t","fingerprint":"f"}"#

    static let corpus: [String] = [
        document(finding: good),
        document(
            finding:
                #"{"scanner":"s","rule_id":"r","severity":"info","title":"t","fingerprint":"f","message":"","path":"a/b.py","line":0,"column":3,"cwe":["CWE-79","CWE-1"],"raw":{"ruleId":"x","nested":{"a":[1,2.5,null,true]}}}"#
        ),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"urgent","title":"t","fingerprint":"f"}"#),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"","fingerprint":"f"}"#),
        document(finding: #"{"scanner":"","rule_id":"r","severity":"low","title":"t","fingerprint":"f"}"#),
        document(finding: #"{"rule_id":"r","severity":"low","title":"t","fingerprint":"f"}"#),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","line":-1}"#),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","line":1.5}"#),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","line":true}"#),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","line":"3"}"#),
        document(
            finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","cwe":["cwe-79"]}"#),
        document(
            finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","cwe":"CWE-79"}"#),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","raw":[1]}"#),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","extra":1}"#),
        document(
            finding:
                #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"\#(String(repeating: "f", count: 257))"}"#
        ),
        document(
            finding:
                #"{"scanner":"\#(String(repeating: "s", count: 101))","rule_id":"r","severity":"low","title":"t","fingerprint":"f"}"#
        ),
        document(
            envelope:
                #""scan_id":"not-a-uuid","organization_id":"\#(org)","attempt":1,"batch_index":0,"runner_token":"t""#,
            finding: good),
        document(
            envelope:
                #""scan_id":"\#(scan)","organization_id":"\#(org)","attempt":-1,"batch_index":0,"runner_token":"t""#,
            finding: good),
        document(
            envelope:
                #""scan_id":"\#(scan)","organization_id":"\#(org)","attempt":1,"batch_index":0,"runner_token":"""#,
            finding: good),
        document(
            envelope: #""scan_id":"\#(scan)","organization_id":"\#(org)","attempt":1,"batch_index":0"#,
            finding: good),
        document(
            envelope:
                #""scan_id":"\#(scan)","organization_id":"\#(org)","attempt":1,"batch_index":0,"runner_token":"t","surprise":true"#,
            finding: good),
        "{\"scan_id\":\"\(scan)\",\"organization_id\":\"\(org)\",\"attempt\":1,\"batch_index\":0,\"runner_token\":\"t\",\"findings\":["
            + Array(repeating: good, count: 501).joined(separator: ",") + "]}",
        "{\"scan_id\":\"\(scan)\",\"organization_id\":\"\(org)\",\"attempt\":1,\"batch_index\":0,\"runner_token\":\"t\",\"findings\":{}}",
        "[]",
        // Escapes, non-ASCII, surrogate pairs and unpaired ones, whitespace: valid.
        document(
            finding:
                #"{ "scanner" : "s\u00e9" ,"rule_id":"r","severity":"low","title":"t\t\"q\" \\ \/ 😀 \ud83d\ude00 \ud800","fingerprint":"f","raw":{"k":"\u0000","l":"\udc00","m":[{}]}}"#
        ),
        // Integers written as 1.0 or 1e2 are integers to JSON Schema; the bound is PostgreSQL's integer.
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","line":1.0}"#),
        document(
            finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","column":1e2}"#),
        document(
            finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","line":2147483648}"#),
        document(
            finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","line":1e400}"#),
        // Lengths count code points: 1000 two-byte characters fit a title, 1001 do not.
        document(
            finding:
                #"{"scanner":"s","rule_id":"r","severity":"low","title":"\#(String(repeating: "é", count: 1000))","fingerprint":"f"}"#
        ),
        document(
            finding:
                #"{"scanner":"s","rule_id":"r","severity":"low","title":"\#(String(repeating: "é", count: 1001))","fingerprint":"f"}"#
        ),
        document(
            finding:
                #"{"scanner":"s","rule_id":"r","severity":"low","title":"\#(String(repeating: "\\u00e9", count: 1001))","fingerprint":"f"}"#
        ),
        // A key given twice: Python's jsonschema takes the last, Foundation's decoder the first, so
        // the writer refuses every one of these (the only documents where it is stricter than the
        // schema's reference implementation).
        document(
            finding: #"{"scanner":"","scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f"}"#),
        document(
            finding: #"{"scanner":"s","scanner":"","rule_id":"r","severity":"low","title":"t","fingerprint":"f"}"#),
        document(
            finding:
                #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","cwe":["x"],"cwe":["CWE-1"]}"#
        ),
        "{\"scan_id\":\"\(scan)\",\"organization_id\":\"\(org)\",\"attempt\":1,\"batch_index\":0,\"runner_token\":\"t\",\"findings\":[{}],\"findings\":[\(good)]}",
        // Not JSON: a trailing comma, a leading zero, a raw control character, a bad escape, cut short.
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f",}"#),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"t","fingerprint":"f","line":01}"#),
        document(
            finding:
                "{\"scanner\":\"s\",\"rule_id\":\"r\",\"severity\":\"low\",\"title\":\"a\tb\",\"fingerprint\":\"f\"}"),
        document(finding: #"{"scanner":"s","rule_id":"r","severity":"low","title":"\x41","fingerprint":"f"}"#),
        String(document(finding: good).dropLast()),
    ]

    /// How many documents of the corpus are valid.
    static let validDocuments = 9

    @Test("the writer's check and Python's jsonschema agree on every document of the corpus")
    func agreesWithJSONSchema() async throws {
        let (_, output) = try await validateMessages(
            Self.corpus.map { (MessageType.findingsBatch.rawValue, Data($0.utf8)) })
        let verdicts = output.split(separator: "\n").map { $0.hasPrefix("ok") }
        #expect(verdicts.count == Self.corpus.count, "\(output.prefix(3000))")
        #expect(verdicts.filter { $0 }.count == Self.validDocuments, "valid documents of the corpus: \(output)")
        for (index, body) in Self.corpus.enumerated() where index < verdicts.count {
            let swift: Bool
            do {
                _ = try FindingsBatchParser.parse(Array(body.utf8))
                swift = true
            } catch {
                swift = false
            }
            let duplicated = JSONDuplicateNames.first(in: Array(body.utf8)) != nil
            #expect(
                swift == (verdicts[index] && !duplicated),
                "document \(index) (\(body.prefix(160))): Python says \(verdicts[index]), duplicate names: \(duplicated)"
            )
            if duplicated {
                let refusal = #expect(throws: FindingsBatchParser.Invalid.self) {
                    try FindingsBatchParser.parse(Array(body.utf8))
                }
                #expect(refusal?.reason.contains("twice") == true, "\(refusal?.reason ?? "accepted")")
            }
        }
    }

    @Test("a refusal names the field; NUL characters become U+FFFD (PostgreSQL text cannot hold them)")
    func reasonsAndCleaning() throws {
        do {
            _ = try FindingsBatchParser.parse(Array(Self.corpus[2].utf8))
            Issue.record("an unknown severity passed")
        } catch {
            #expect(error.reason.hasPrefix("findings[0].severity"))
            #expect(error.envelope?.batchIndex == 0, "the envelope was valid, so the batch can be counted")
        }
        let withNUL = Self.document(
            finding:
                #"{"scanner":"s","rule_id":"r","severity":"low","title":"a\u0000b","fingerprint":"f","raw":{"k":"x\u0000y"}}"#
        )
        let batch = try FindingsBatchParser.parse(Array(withNUL.utf8))
        #expect(batch.text(batch.findings[0].title) == "a\u{FFFD}b")
        #expect(batch.findings[0].raw.map { batch.text($0) } == #"{"k":"x\ufffdy"}"#)
        do {
            _ = try FindingsBatchParser.parse(Array(Self.corpus.last!.utf8))
            Issue.record("a document cut short passed")
        } catch {
            #expect(error.reason == "not JSON" && error.envelope == nil)
        }
    }

    @Test("the values come out as sent: decoded escapes, spans into the body, CWE lists, absent fields")
    func values() throws {
        let raw = #"{"ruleId":"x", "text":"a\\u0000b", "list":[1, 2.5e3, null, false]}"#
        let body = Self.document(
            finding:
                #"{"scanner":"semgrep","rule_id":"r\u00e9","severity":"critical","title":"caf\u00e9 \ud83d\ude00 \"x\"","message":"m\nn","path":"a/ä.py","line":12,"column":0,"cwe":["CWE-79","CWE-1"],"fingerprint":"f1","raw":\#(raw)},"#
                + #"{"scanner":"s","rule_id":"r","severity":"info","title":"t","fingerprint":"f2"}"#)
        let batch = try FindingsBatchParser.parse(Array(body.utf8))
        #expect(batch.scanID.uuidString.lowercased() == Self.scan && batch.attempt == 1 && batch.runnerToken == "v1.t")
        try #require(batch.findings.count == 2)
        let (a, b) = (batch.findings[0], batch.findings[1])
        #expect(batch.text(a.scanner) == "semgrep" && batch.text(a.ruleID) == "ré" && a.severity == .critical)
        #expect(
            batch.text(a.title) == "café 😀 \"x\"" && batch.text(a.message) == "m\nn" && batch.text(a.path) == "a/ä.py")
        #expect(a.line == 12 && a.column == 0 && batch.cwe(of: a) == ["CWE-79", "CWE-1"])
        #expect(batch.text(a.fingerprint) == "f1")
        #expect(a.raw.map { batch.text($0) } == raw, "raw is kept as it came (an escaped backslash is not an escape)")
        #expect(batch.text(b.message) == "" && batch.text(b.path) == "" && b.line == nil && b.column == nil)
        #expect(batch.cwe(of: b).isEmpty && b.raw == nil)
        #expect(batch.jsonBody() == Array(body.utf8))
    }

    static func report(_ extra: String = "", kind: String = "completed") -> String {
        #"{"scan_id":"\#(scan)","organization_id":"\#(org)","attempt":1,"kind":"\#(kind)","at":"2026-11-28T10:00:00.000Z","runner_token":"v1.t"\#(extra)}"#
    }

    static let statusCorpus: [String] = [
        report(),
        report(
            #","findings_batches":2,"counts":{"high":1},"scanners":[{"name":"semgrep","outcome":"ok","duration_ms":5,"findings":1}],"partial":false"#
        ),
        report(kind: "exploded"),
        report(#","counts":{"urgent":1}"#),
        report(#","scanners":[{"name":"semgrep","outcome":"ok","color":"red"}]"#),
        report(#","scanners":[{"name":"semgrep","outcome":"meh"}]"#),
        report(#","findings_batches":-1"#),
        report(#","surprise":1"#),
        report(#","reason":"\#(String(repeating: "r", count: 257))""#),
        #"{"scan_id":"\#(scan)","organization_id":"\#(org)","attempt":1,"kind":"started","at":"2026-11-28T10:00:00.000Z"}"#,
    ]

    @Test("the status writer's check and Python's jsonschema agree on every status report of the corpus")
    func statusAgreesWithJSONSchema() async throws {
        let (_, output) = try await validateMessages(
            Self.statusCorpus.map { (MessageType.statusReport.rawValue, Data($0.utf8)) })
        let verdicts = output.split(separator: "\n").map { $0.hasPrefix("ok") }
        #expect(verdicts.count == Self.statusCorpus.count, "\(output.prefix(3000))")
        #expect(verdicts.filter { $0 }.count == 2, "\(output)")
        for (index, body) in Self.statusCorpus.enumerated() where index < verdicts.count {
            let swift: Bool
            switch StatusWriter.parse(Array(body.utf8)) {
            case .success: swift = true
            case .failure: swift = false
            }
            #expect(swift == verdicts[index], "report \(index) (\(body.prefix(200))): Python says \(verdicts[index])")
        }
    }
}
