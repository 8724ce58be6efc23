import CloudScanCore
import Foundation

/// A `findings.batch.v1` body checked against its JSON Schema (topology/schemas/findings.batch.v1.json)
/// in one parse: required fields, types, bounds, enums, patterns and no unknown fields. The
/// reason of a refusal names the field (`findings[3].severity: not one of …`).
public enum FindingsBatchParser {
    public struct Finding: Sendable {
        public var scanner: String
        public var ruleID: String
        public var severity: Severity
        public var title: String
        public var message: String
        public var path: String
        public var line: Int?
        public var column: Int?
        public var cwe: [String]
        public var fingerprint: String
        /// The raw object as compact JSON text, or nil.
        public var raw: String?
    }

    public struct Batch: Sendable {
        public var scanID: UUID
        public var organizationID: UUID
        public var attempt: Int
        public var batchIndex: Int
        public var runnerToken: String
        public var findings: [Finding]

        /// The batch as findings.batch.v1 JSON again (for a dead-letter copy).
        public func jsonBody() -> [UInt8] {
            var out = JSONText()
            out.raw("{\"scan_id\":")
            out.string(scanID.uuidString.lowercased())
            out.raw(",\"organization_id\":")
            out.string(organizationID.uuidString.lowercased())
            out.raw(",\"attempt\":\(attempt),\"batch_index\":\(batchIndex),\"runner_token\":")
            out.string(runnerToken)
            out.raw(",\"findings\":[")
            for (index, f) in findings.enumerated() {
                if index > 0 { out.raw(",") }
                out.raw("{\"scanner\":")
                out.string(f.scanner)
                out.raw(",\"rule_id\":")
                out.string(f.ruleID)
                out.raw(",\"severity\":")
                out.string(f.severity.rawValue)
                out.raw(",\"title\":")
                out.string(f.title)
                out.raw(",\"message\":")
                out.string(f.message)
                out.raw(",\"path\":")
                out.string(f.path)
                if let line = f.line { out.raw(",\"line\":\(line)") }
                if let column = f.column { out.raw(",\"column\":\(column)") }
                out.raw(",\"cwe\":[")
                for (n, cwe) in f.cwe.enumerated() {
                    if n > 0 { out.raw(",") }
                    out.string(cwe)
                }
                out.raw("],\"fingerprint\":")
                out.string(f.fingerprint)
                if let raw = f.raw { out.raw(",\"raw\":" + raw) }
                out.raw("}")
            }
            out.raw("]}")
            return out.bytes
        }
    }

    /// Who a batch says it is from.
    public struct Envelope: Sendable, Equatable {
        public var scanID: UUID
        public var organizationID: UUID
        public var attempt: Int
        public var batchIndex: Int
        public var runnerToken: String
    }

    public struct Invalid: Error, CustomStringConvertible, Sendable {
        public var reason: String
        /// Set when the envelope was valid and only the findings were not: the batch can still be
        /// counted for its scan (refused), so the scan does not wait for it forever.
        public var envelope: Envelope?
        public init(reason: String, envelope: Envelope? = nil) {
            self.reason = reason
            self.envelope = envelope
        }
        public var description: String { reason }
    }

    static let topLevelKeys: Set<String> = [
        "scan_id", "organization_id", "attempt", "batch_index", "runner_token", "findings",
    ]
    static let findingKeys: Set<String> = [
        "scanner", "rule_id", "severity", "title", "message", "path", "line", "column", "cwe", "fingerprint", "raw",
    ]
    /// The class JSONSerialization gives JSON booleans (numbers are NSNumber too).
    static let booleanType: ObjectIdentifier = {
        let parsed = try! JSONSerialization.jsonObject(with: Data("[true]".utf8)) as! [Any]
        return ObjectIdentifier(type(of: parsed[0] as AnyObject))
    }()

    public static func parse(_ body: [UInt8]) throws(Invalid) -> Batch {
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(body))
        } catch {
            throw Invalid(reason: "not JSON")
        }
        guard let top = object as? [String: Any] else { throw Invalid(reason: "not a JSON object") }
        if let unknown = top.keys.first(where: { !topLevelKeys.contains($0) }) {
            throw Invalid(reason: "\(unknown): not a field of findings.batch.v1")
        }
        let scanID = try uuid(top, "scan_id")
        let organizationID = try uuid(top, "organization_id")
        let attempt = try integer(top, "attempt", path: "attempt", required: true, minimum: 0)!
        let batchIndex = try integer(top, "batch_index", path: "batch_index", required: true, minimum: 0)!
        let token = try string(top, "runner_token", path: "runner_token", required: true, minLength: 1, maxLength: 512)!
        let envelope = Envelope(
            scanID: scanID, organizationID: organizationID, attempt: attempt, batchIndex: batchIndex,
            runnerToken: token)
        do {
            return try parseFindings(top, envelope)
        } catch {
            throw Invalid(reason: error.reason, envelope: envelope)
        }
    }

    private static func parseFindings(_ top: [String: Any], _ envelope: Envelope) throws(Invalid) -> Batch {
        guard let list = top["findings"] else { throw Invalid(reason: "findings: missing") }
        guard let items = list as? [Any] else { throw Invalid(reason: "findings: not an array") }
        guard items.count <= FindingsBatchMessage.maximumFindings else {
            throw Invalid(reason: "findings: more than \(FindingsBatchMessage.maximumFindings) items")
        }
        var findings: [Finding] = []
        findings.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            let at = "findings[\(index)]"
            guard let finding = item as? [String: Any] else { throw Invalid(reason: "\(at): not an object") }
            if let unknown = finding.keys.first(where: { !findingKeys.contains($0) }) {
                throw Invalid(reason: "\(at).\(unknown): not a field of a finding")
            }
            let severityText = try string(finding, "severity", path: "\(at).severity", required: true, minLength: 0)!
            guard let severity = Severity(rawValue: severityText) else {
                throw Invalid(reason: "\(at).severity: not one of critical, high, medium, low, info")
            }
            var cwe: [String] = []
            if let value = finding["cwe"] {
                guard let list = value as? [Any] else { throw Invalid(reason: "\(at).cwe: not an array") }
                for (cweIndex, entry) in list.enumerated() {
                    guard let text = entry as? String, isCWE(text) else {
                        throw Invalid(reason: "\(at).cwe[\(cweIndex)]: not CWE-<number>")
                    }
                    cwe.append(text)
                }
            }
            var raw: String?
            if let value = finding["raw"] {
                guard value is [String: Any] else { throw Invalid(reason: "\(at).raw: not an object") }
                guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys]) else {
                    throw Invalid(reason: "\(at).raw: not serializable")
                }
                let text = String(decoding: data, as: UTF8.self)
                // jsonb refuses \u0000 too.
                raw = text.contains("\\u0000") ? text.replacingOccurrences(of: "\\u0000", with: "\\ufffd") : text
            }
            findings.append(
                Finding(
                    scanner: try string(finding, "scanner", path: "\(at).scanner", required: true, maxLength: 100)!,
                    ruleID: try string(finding, "rule_id", path: "\(at).rule_id", required: true, maxLength: 500)!,
                    severity: severity,
                    title: try string(finding, "title", path: "\(at).title", required: true, maxLength: 1000)!,
                    message: try string(finding, "message", path: "\(at).message", minLength: 0, maxLength: 10000)
                        ?? "",
                    path: try string(finding, "path", path: "\(at).path", minLength: 0, maxLength: 4096) ?? "",
                    line: try integer(finding, "line", path: "\(at).line", minimum: 0),
                    column: try integer(finding, "column", path: "\(at).column", minimum: 0),
                    cwe: cwe,
                    fingerprint: try string(
                        finding, "fingerprint", path: "\(at).fingerprint", required: true, maxLength: 256)!,
                    raw: raw))
        }
        return Batch(
            scanID: envelope.scanID, organizationID: envelope.organizationID, attempt: envelope.attempt,
            batchIndex: envelope.batchIndex, runnerToken: envelope.runnerToken, findings: findings)
    }

    private static func uuid(_ object: [String: Any], _ key: String) throws(Invalid) -> UUID {
        guard let value = object[key] else { throw Invalid(reason: "\(key): missing") }
        guard let text = value as? String, let id = UUID(uuidString: text) else {
            throw Invalid(reason: "\(key): not a UUID")
        }
        return id
    }

    private static func string(
        _ object: [String: Any], _ key: String, path: String, required: Bool = false, minLength: Int = 1,
        maxLength: Int = .max
    ) throws(Invalid) -> String? {
        guard let value = object[key] else {
            if required { throw Invalid(reason: "\(path): missing") }
            return nil
        }
        guard let text = value as? String else { throw Invalid(reason: "\(path): not a string") }
        let length = text.count
        guard length >= minLength else { throw Invalid(reason: "\(path): empty") }
        guard length <= maxLength else { throw Invalid(reason: "\(path): longer than \(maxLength) characters") }
        return clean(text)
    }

    private static func integer(
        _ object: [String: Any], _ key: String, path: String, required: Bool = false, minimum: Int
    ) throws(Invalid) -> Int? {
        guard let value = object[key] else {
            if required { throw Invalid(reason: "\(path): missing") }
            return nil
        }
        guard let number = value as? NSNumber, ObjectIdentifier(type(of: number as AnyObject)) != booleanType,
            let integer = Int(exactly: number.doubleValue)
        else { throw Invalid(reason: "\(path): not an integer") }
        guard integer >= minimum else { throw Invalid(reason: "\(path): below \(minimum)") }
        guard integer <= Int(Int32.max) else { throw Invalid(reason: "\(path): too large") }
        return integer
    }

    private static func isCWE(_ text: String) -> Bool {
        guard text.hasPrefix("CWE-") else { return false }
        let digits = text.dropFirst(4)
        return !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
    }

    /// PostgreSQL text cannot hold NUL: it becomes U+FFFD (valid JSON may carry `\u0000`).
    static func clean(_ text: String) -> String {
        text.contains("\0") ? text.replacingOccurrences(of: "\0", with: "\u{FFFD}") : text
    }
}
