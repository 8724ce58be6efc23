import CloudScanCore
import CloudScanTestSupport
import Foundation
import Testing

/// The Swift message types against the published JSON Schemas (validated by Python's jsonschema).
@Suite("Message contracts")
struct MessageContractTests {
    let organization = UUID()
    let scan = UUID()
    let at = Date(timeIntervalSince1970: 1_764_295_753.25)

    func validate(_ documents: [(MessageType, Data)]) async throws -> (Int32, String) {
        try await validateMessages(documents.map { ($0.0.rawValue, $0.1) })
    }

    @Test("encoded messages validate against their schemas and decode back")
    func encodedMessagesMatchSchemas() async throws {
        let encoder = MessageCoding.encoder()
        let create = ScanCreateMessage(
            scanID: scan, organizationID: organization, project: .init(externalKey: "proj-123"),
            scanTypes: [.sast, .secrets],
            artifact: .init(url: "https://storage.local/a.tar.gz", sha256: String(repeating: "a", count: 64)),
            requestedAt: at, timeoutSeconds: 900, labels: ["team": "payments"])
        let cancel = ScanCancelMessage(
            scanID: scan, organizationID: organization, requestedAt: at, requestedBy: "gateway")
        let batch = FindingsBatchMessage(
            scanID: scan, organizationID: organization, attempt: 1, batchIndex: 0, runnerToken: "v1.token",
            findings: [
                FindingRecord(
                    scanner: "bandit", ruleID: "B105", severity: .low, title: "Hardcoded password", message: "…",
                    path: "app/settings.py", line: 12, column: 4, cwe: ["CWE-259"], fingerprint: "bandit:B105:abc",
                    raw: .object(["ruleId": .string("B105"), "rule_index": .int(3), "level": .string("note")]))
            ])
        let completed = StatusReportMessage(
            scanID: scan, organizationID: organization, attempt: 1, kind: .completed, at: at, runnerToken: "v1.token",
            findingsBatches: 1, counts: SeverityCounts(),
            scanners: [
                .init(name: "semgrep", outcome: .ok, durationMS: 1200, findings: 8),
                .init(name: "syft-osv", outcome: .skipped, reason: "advisory database unavailable"),
            ], partial: true, reason: "partial", message: "syft-osv skipped: advisory database unavailable")
        let (status, output) = try await validate([
            (.scanCreate, try encoder.encode(create)), (.scanCancel, try encoder.encode(cancel)),
            (.findingsBatch, try encoder.encode(batch)), (.statusReport, try encoder.encode(completed)),
        ])
        #expect(status == 0, "\(output)")
        #expect(output.split(separator: "\n").count == 4)
        // Keys inside raw are the scanner's, never re-cased.
        #expect(String(decoding: try encoder.encode(batch), as: UTF8.self).contains("\"ruleId\":\"B105\""))
        #expect(
            try MessageCoding.decoder().decode(StatusReportMessage.self, from: try encoder.encode(completed))
                == completed)

        let json = String(decoding: try encoder.encode(create), as: UTF8.self)
        #expect(json.contains("\"scan_id\":\"\(scan.uuidString)\""))
        #expect(json.contains("\"requested_at\":\"2025-11-28T02:09:13.250Z\""))
        #expect(json.contains("\"external_key\":\"proj-123\""))
        let decoder = MessageCoding.decoder()
        #expect(try decoder.decode(ScanCreateMessage.self, from: Data(json.utf8)) == create)
        #expect(try decoder.decode(FindingsBatchMessage.self, from: try encoder.encode(batch)) == batch)
    }

    @Test("the schemas reject what the consumers must refuse")
    func schemasRejectBadMessages() async throws {
        let bad: [(MessageType, String)] = [
            (
                .scanCreate,
                #"{"scan_id":"nope","organization_id":"\#(organization)","project":{"id":"\#(UUID())"},"scan_types":["sast"],"artifact":{"url":"https://x"},"requested_at":"2026-11-28T00:00:00Z"}"#
            ),
            (
                .scanCreate,
                #"{"scan_id":"\#(scan)","organization_id":"\#(organization)","project":{},"scan_types":["sast"],"artifact":{"url":"https://x"},"requested_at":"2026-11-28T00:00:00Z"}"#
            ),
            (
                .scanCreate,
                #"{"scan_id":"\#(scan)","organization_id":"\#(organization)","project":{"external_key":"p"},"scan_types":["dast"],"artifact":{"url":"https://x"},"requested_at":"2026-11-28T00:00:00Z"}"#
            ),
            (
                .findingsBatch,
                #"{"scan_id":"\#(scan)","organization_id":"\#(organization)","attempt":0,"batch_index":0,"runner_token":"t","findings":[{"scanner":"x","rule_id":"r","severity":"urgent","title":"t","fingerprint":"f"}]}"#
            ),
        ]
        let (status, output) = try await validate(bad.map { ($0.0, Data($0.1.utf8)) })
        #expect(status == 1)
        let lines = output.split(separator: "\n")
        #expect(lines.count == bad.count)
        #expect(lines.allSatisfy { $0.hasPrefix("invalid") }, "\(output)")
    }
}

@Suite("duplicate member names")
struct DuplicateNameTests {
    @Test(
        "a name given twice in one object is found, however it is spelled; the same name in different objects is not",
        arguments: [
            (#"{"a":1,"a":2}"#, "a"), (#"{"a":1,"\u0061":2}"#, "a"), (#"{"x":{"k":1,"k":2}}"#, "k"),
            (#"{"x":[{"k":1},{"k":2,"k":3}]}"#, "k"), (#"{"\ud83d\ude00":1,"😀":2}"#, "😀"),
            (#"{"a":"a","b":{"a":1},"c":[{"a":2}]}"#, nil), (#"{"a\"b":1,"a\\b":2}"#, nil), (#"["a","a"]"#, nil),
            (#"{"a":1,"a"#, nil),
        ] as [(String, String?)])
    func duplicates(document: String, name: String?) {
        #expect(JSONDuplicateNames.first(in: Array(document.utf8)) == name, "\(document)")
    }

    @Test("a scan.create with a duplicated name is refused, naming it")
    func refused() {
        let create =
            #"{"scan_id":"0b9a8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d","artifact":{"url":"https://a/b"},"artifact":{"url":"file:///etc/passwd"}}"#
        #expect(ScanCreateMessage.wireProblem(Array(create.utf8))?.contains("artifact: given twice") == true)
    }
}

@Suite("message text")
struct MessageTextTests {
    @Test(
        "a body that is not plain UTF-8 (UTF-16, a byte order mark, NUL bytes, broken sequences) is refused before any reader sees it"
    )
    func notUTF8() {
        let json = #"{"scan_id":"0b9a8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d"}"#
        let utf16 = Array(json.utf16).flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        for body in [utf16, [0xEF, 0xBB, 0xBF] + Array(json.utf8), Array(json.utf8) + [0], Array(json.utf8) + [0xC3]] {
            #expect(!JSONDuplicateNames.isPlainUTF8(body))
            #expect(ScanCreateMessage.wireProblem(body) == "body: not UTF-8 JSON text")
        }
        #expect(JSONDuplicateNames.isPlainUTF8(Array(json.utf8)))
    }
}
