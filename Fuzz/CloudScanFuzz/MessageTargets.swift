import CloudScanCore
import CloudScanInbound
import Foundation

/// Messages from runners and gateways. Differential: whatever the byte-level findings parser or
/// the status report parser accepts, JSONSerialization parses and the JSON Schema accepts too,
/// with the same values. For scan.create: whatever the broker path accepts, the schema accepts.
enum MessageTargets {
    static let findingsSchema = SchemaCheck.load("findings.batch.v1.json")
    static let statusSchema = SchemaCheck.load("status.report.v1.json")
    static let createSchema = SchemaCheck.load("scan.create.v1.json")

    /// The second opinion on a body: JSONSerialization accepts it, and its values as JSONDecoder
    /// reads them (lone surrogate escapes, which the parsers rewrite to U+FFFD as Python does and
    /// Foundation refuses, rewritten the same way first).
    static func reference(_ body: [UInt8]) -> JSONValue {
        let text = Data(rewritingLoneSurrogates(body))
        guard (try? JSONSerialization.jsonObject(with: text, options: [.fragmentsAllowed])) != nil else {
            Property.fail(
                "the parser accepted what JSONSerialization refuses: \(String(decoding: body.prefix(300), as: UTF8.self))"
            )
        }
        guard let value = try? JSONDecoder().decode(JSONValue.self, from: text) else {
            Property.fail("the parser accepted what JSONDecoder refuses")
        }
        return value
    }

    static func findingsBatch(_ body: [UInt8]) {
        guard let batch = try? FindingsBatchParser.parse(body) else { return }
        let value = reference(body)
        if let problem = findingsSchema.problem(value) { Property.fail("parser accepted, schema refuses: \(problem)") }
        Property.check(value["scan_id"]?.stringValue.flatMap(UUID.init(uuidString:)) == batch.scanID, "scan_id")
        Property.check(
            value["organization_id"]?.stringValue.flatMap(UUID.init(uuidString:)) == batch.organizationID,
            "organization_id")
        Property.check(value["attempt"].flatMap(SchemaCheck.numeric) == Double(batch.attempt), "attempt")
        Property.check(value["batch_index"].flatMap(SchemaCheck.numeric) == Double(batch.batchIndex), "batch_index")
        Property.check(value["runner_token"]?.stringValue == batch.runnerToken, "runner_token")
        let findings = value["findings"]?.arrayValue ?? []
        Property.check(findings.count == batch.findings.count, "findings count")
        for (index, (expected, finding)) in zip(findings, batch.findings).enumerated() {
            func text(_ key: String) -> String { clean(expected[key]?.stringValue ?? "") }
            Property.check(batch.text(finding.scanner) == text("scanner"), "findings[\(index)].scanner")
            Property.check(batch.text(finding.ruleID) == text("rule_id"), "findings[\(index)].rule_id")
            Property.check(finding.severity.rawValue == text("severity"), "findings[\(index)].severity")
            Property.check(batch.text(finding.title) == text("title"), "findings[\(index)].title")
            Property.check(batch.text(finding.message) == text("message"), "findings[\(index)].message")
            Property.check(batch.text(finding.path) == text("path"), "findings[\(index)].path")
            Property.check(batch.text(finding.fingerprint) == text("fingerprint"), "findings[\(index)].fingerprint")
            Property.check(
                finding.line.map(Double.init) == expected["line"].flatMap(SchemaCheck.numeric),
                "findings[\(index)].line")
            Property.check(
                finding.column.map(Double.init) == expected["column"].flatMap(SchemaCheck.numeric),
                "findings[\(index)].column")
            Property.check(
                batch.cwe(of: finding) == (expected["cwe"]?.arrayValue ?? []).compactMap(\.stringValue).map(clean),
                "findings[\(index)].cwe")
            if let raw = finding.raw {
                let rawText = Array(batch.storage[Int(raw.start)..<Int(raw.start) + Int(raw.count)])
                let parsed = try? JSONDecoder().decode(JSONValue.self, from: Data(rewritingLoneSurrogates(rawText)))
                Property.check(parsed != nil && expected["raw"] != nil, "findings[\(index)].raw is an object")
            } else {
                Property.check(expected["raw"] == nil, "findings[\(index)].raw kept")
            }
        }
    }

    static func statusReport(_ body: [UInt8]) {
        guard case .success(let report) = StatusReportParser.parse(body) else { return }
        let value = reference(body)
        if let problem = statusSchema.problem(value) { Property.fail("parser accepted, schema refuses: \(problem)") }
        Property.check(value["scan_id"]?.stringValue.flatMap(UUID.init(uuidString:)) == report.scanID, "scan_id")
        Property.check(value["attempt"].flatMap(SchemaCheck.numeric) == Double(report.attempt), "attempt")
        Property.check(value["kind"]?.stringValue == report.kind.rawValue, "kind")
        Property.check(
            value["findings_batches"].flatMap(SchemaCheck.numeric) == report.findingsBatches.map(Double.init),
            "findings_batches")
    }

    static let policy = ArtifactPolicy(fileRoots: ["/srv/artifacts/{organization_id}"], httpsHosts: [])

    static func scanCreate(_ body: [UInt8]) {
        // The dispatcher's checks of a gateway's own scan.create, in its order.
        if ScanCreateMessage.wireProblem(body) != nil { return }
        guard let message = try? MessageCoding.decoder().decode(ScanCreateMessage.self, from: Data(body)) else {
            return
        }
        let request = CreateScanRequest(
            project: message.project, scanTypes: message.scanTypes.map(\.rawValue), artifactURL: message.artifact.url,
            artifactSHA256: message.artifact.sha256, timeoutSeconds: message.timeoutSeconds,
            labels: message.labels ?? [:])
        guard (try? request.validated()) != nil else { return }
        guard (try? policy.check(request.artifactURL, organizationID: message.organizationID)) != nil else { return }
        let value = reference(body)
        if let problem = createSchema.problem(value) {
            Property.fail("dispatcher accepted, schema refuses: \(problem)")
        }
        Property.check(body.count <= ScanCreateMessage.maximumBodyBytes, "size")
        // What would be stored: no NUL (libpq cuts C strings there), printable ASCII URL.
        Property.check(!request.artifactURL.utf8.contains(0), "NUL in the artifact URL")
        Property.check(!(message.project.externalKey ?? "").utf8.contains(0), "NUL in the project key")
        Property.check(
            !(message.labels ?? [:]).contains { $0.key.utf8.contains(0) || $0.value.utf8.contains(0) }, "NUL in labels")
    }

    /// NUL cannot be stored in text: the findings parser makes it U+FFFD.
    static func clean(_ text: String) -> String { text.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") }

    /// `\uD800`-style escapes not part of a pair → `\uFFFD` (what the parser does for text).
    static func rewritingLoneSurrogates(_ bytes: [UInt8]) -> [UInt8] {
        func hex(_ index: Int) -> Int? {
            guard index + 6 <= bytes.count, bytes[index] == 0x5C, bytes[index + 1] == 0x75 else { return nil }
            return Int(String(decoding: bytes[(index + 2)..<(index + 6)], as: UTF8.self), radix: 16)
        }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var index = 0
        var backslashes = 0
        while index < bytes.count {
            if bytes[index] == 0x5C && backslashes % 2 == 0, let unit = hex(index) {
                if (0xD800...0xDBFF).contains(unit), let low = hex(index + 6), (0xDC00...0xDFFF).contains(low) {
                    out += bytes[index..<(index + 12)]
                    index += 12
                } else if (0xD800...0xDFFF).contains(unit) {
                    out += Array("\\ufffd".utf8)
                    index += 6
                } else {
                    out += bytes[index..<(index + 6)]
                    index += 6
                }
                backslashes = 0
                continue
            }
            backslashes = bytes[index] == 0x5C ? backslashes + 1 : 0
            out.append(bytes[index])
            index += 1
        }
        return out
    }
}
