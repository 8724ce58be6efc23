import CloudScanCore
import Foundation

/// `status.report.v1` as a runner sends it, checked against the schema
/// (topology/schemas/status.report.v1.json): members the schema does not know are refused, and
/// every integer is bounded as the schema bounds it, so nothing downstream converts an
/// out-of-range value. The reason of a refusal names the field.
public enum StatusReportParser {
    public static let topLevelKeys: Set<String> = [
        "scan_id", "organization_id", "attempt", "kind", "at", "runner_token", "findings_batches", "counts",
        "scanners", "partial", "reason", "message",
    ]

    public static let scannerKeys: Set<String> = ["name", "outcome", "duration_ms", "findings", "reason"]

    /// PostgreSQL's `integer`: the bound of every count in a report.
    public static let maximumInteger = Int(Int32.max)
    /// The largest attempt and batch count a report may carry (status.report.v1's maxima).
    public static let maximumAttempt = 1000
    public static let maximumBatches = 1_000_000

    /// Decodes and checks a report against status.report.v1; the reason names the field.
    public static func parse(_ body: [UInt8]) -> Result<StatusReportMessage, FindingsBatchParser.Invalid> {
        guard JSONDuplicateNames.isPlainUTF8(body) else { return .failure(.init(reason: "body: not UTF-8 JSON text")) }
        if let name = JSONDuplicateNames.first(in: body) {
            return .failure(.init(reason: "\(name): given twice in one object"))
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            return .failure(.init(reason: "not a JSON object"))
        }
        if let unknown = object.keys.first(where: { !topLevelKeys.contains($0) }) {
            return .failure(.init(reason: "\(unknown): not a field of status.report.v1"))
        }
        // additionalProperties is false inside counts and each scanners item too.
        if let counts = object["counts"] as? [String: Any],
            let unknown = counts.keys.first(where: { !Severity.allCases.map(\.rawValue).contains($0) })
        {
            return .failure(.init(reason: "counts.\(unknown): not a severity"))
        }
        for (index, item) in ((object["scanners"] as? [Any]) ?? []).enumerated() {
            if let scanner = item as? [String: Any],
                let unknown = scanner.keys.first(where: { !scannerKeys.contains($0) })
            {
                return .failure(.init(reason: "scanners[\(index)].\(unknown): not a field of a scanner outcome"))
            }
        }
        let report: StatusReportMessage
        do {
            report = try MessageCoding.decoder().decode(StatusReportMessage.self, from: Data(body))
        } catch let DecodingError.keyNotFound(key, _) {
            return .failure(.init(reason: "\(MessageCoding.wireName(key.stringValue)): missing"))
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context),
            let DecodingError.dataCorrupted(context)
        {
            let path = context.codingPath.map { MessageCoding.wireName($0.stringValue) }.joined(separator: ".")
            return .failure(.init(reason: "\(path.isEmpty ? "body" : path): not valid"))
        } catch {
            return .failure(.init(reason: "unreadable"))
        }
        // Every integer is bounded as the schema bounds it (PostgreSQL's integer at most), so
        // nothing downstream converts an out-of-range value.
        let int4 = Self.maximumInteger
        if !(0...Self.maximumAttempt).contains(report.attempt) {
            return .failure(.init(reason: "attempt: between 0 and \(Self.maximumAttempt)"))
        }
        if report.runnerToken.isEmpty || report.runnerToken.count > 512 {
            return .failure(.init(reason: "runner_token: empty or too long"))
        }
        if let batches = report.findingsBatches, !(0...Self.maximumBatches).contains(batches) {
            return .failure(.init(reason: "findings_batches: between 0 and \(Self.maximumBatches)"))
        }
        if let reason = report.reason, reason.count > 256 { return .failure(.init(reason: "reason: too long")) }
        if let message = report.message, message.count > 4096 { return .failure(.init(reason: "message: too long")) }
        if let counts = report.counts,
            [counts.critical, counts.high, counts.medium, counts.low, counts.info].contains(where: {
                !(0...int4).contains($0)
            })
        {
            return .failure(.init(reason: "counts: between 0 and \(int4)"))
        }
        if let scanners = report.scanners, scanners.count > 256 {
            return .failure(.init(reason: "scanners: at most 256"))
        }
        for (index, scanner) in (report.scanners ?? []).enumerated() {
            if scanner.name.isEmpty || scanner.name.count > 128 {
                return .failure(.init(reason: "scanners[\(index)].name: 1 to 128 characters"))
            }
            if !(0...int4).contains(scanner.durationMS ?? 0) || !(0...int4).contains(scanner.findings ?? 0) {
                return .failure(.init(reason: "scanners[\(index)]: between 0 and \(int4)"))
            }
            if let reason = scanner.reason, reason.count > 1024 {
                return .failure(.init(reason: "scanners[\(index)].reason: too long"))
            }
        }
        return .success(report)
    }
}
