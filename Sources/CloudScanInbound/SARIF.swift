import CloudScanCore
import Crypto
import Foundation

/// SARIF 2.1.0 results → findings.
///
/// - severity: `properties.security-severity` (result, then rule) as a CVSS score — ≥ 9 critical,
///   ≥ 7 high, ≥ 4 medium, > 0 low, 0 info; else the level (result, then the rule's default):
///   error high, warning medium, note low, none info; SARIF's default level is warning.
/// - path: relative to the scanned root (absolute `file://` URIs, `./` and `%SRCROOT%` removed).
/// - CWE: `CWE-n` in the rule's or result's tags, or a CWE taxonomy relationship.
/// - fingerprint: SHA-256 over scanner, rule and the result's `partialFingerprints` when there
///   are any; else over scanner, rule, path and the whitespace-normalized snippet (or the source
///   line, or the message), so it survives lines moving. The n-th identical occurrence in a file
///   gets `#n` appended, which keeps fingerprints unique per scan.
public struct SARIFNormalizer {
    public let scanner: String
    public let root: String
    public var ruleIDLastComponent = false
    /// Raw results larger than this are kept trimmed (the message stays under 1 MiB).
    public var maximumRawBytes = 16 * 1024
    private var occurrences: [String: Int] = [:]
    private var sourceLines: [String: [Substring]] = [:]

    public init(scanner: String, root: String, ruleIDLastComponent: Bool = false) {
        self.scanner = scanner
        self.root = root
        self.ruleIDLastComponent = ruleIDLastComponent
    }

    public enum SARIFError: Error, CustomStringConvertible {
        case notSARIF(String)
        public var description: String {
            switch self {
            case .notSARIF(let why): "not SARIF 2.1.0: \(why)"
            }
        }
    }

    public mutating func findings(from document: JSONValue) throws -> [FindingRecord] {
        guard let runs = document["runs"]?.arrayValue else { throw SARIFError.notSARIF("no runs") }
        var out: [FindingRecord] = []
        for run in runs {
            let rules = run["tool"]?["driver"]?["rules"]?.arrayValue ?? []
            var rulesByID: [String: JSONValue] = [:]
            for rule in rules { if let id = rule["id"]?.stringValue { rulesByID[id] = rule } }
            for result in run["results"]?.arrayValue ?? [] {
                if result["suppressions"]?.arrayValue?.isEmpty == false { continue }
                if let kind = result["kind"]?.stringValue, kind != "fail" { continue }
                let ruleIndex = result["ruleIndex"]?.intValue ?? result["rule"]?["index"]?.intValue
                var rawRuleID = result["ruleId"]?.stringValue ?? result["rule"]?["id"]?.stringValue
                var rule: JSONValue? = rawRuleID.flatMap { rulesByID[$0] }
                if rule == nil, let ruleIndex, rules.indices.contains(ruleIndex) { rule = rules[ruleIndex] }
                if rawRuleID == nil { rawRuleID = rule?["id"]?.stringValue }
                var ruleID = rawRuleID ?? "unknown"
                if ruleIDLastComponent, let last = ruleID.split(separator: ".").last { ruleID = String(last) }
                if ruleID.isEmpty { ruleID = "unknown" }
                out.append(finding(result: result, rule: rule, ruleID: ruleID))
            }
        }
        return out
    }

    private mutating func finding(result: JSONValue, rule: JSONValue?, ruleID: String) -> FindingRecord {
        let location = result["locations"]?[0]?["physicalLocation"]
        let path = location.flatMap { normalizePath($0["artifactLocation"]?["uri"]?.stringValue) }
        let region = location?["region"]
        let line = region?["startLine"]?.intValue
        let column = region?["startColumn"]?.intValue
        let message = text(result["message"]) ?? text(rule?["fullDescription"]) ?? text(rule?["shortDescription"])
        let title =
            text(rule?["shortDescription"]).flatMap { $0.hasPrefix("Semgrep Finding:") ? nil : $0 }
            ?? rule?["name"]?.stringValue.flatMap { $0.isEmpty || $0 == rule?["id"]?.stringValue ? nil : $0 }
            ?? message.map(firstSentence).flatMap { $0.isEmpty ? nil : $0 } ?? ruleID
        let severity = Self.severity(result: result, rule: rule)
        var cwe = Set<String>()
        for tags in [rule?["properties"]?["tags"], result["properties"]?["tags"]] {
            for tag in tags?.arrayValue ?? [] { if let tag = tag.stringValue { cwe.formUnion(Self.cwes(in: tag)) } }
        }
        for relationship in rule?["relationships"]?.arrayValue ?? [] {
            let target = relationship["target"]
            if target?["toolComponent"]?["name"]?.stringValue?.uppercased() == "CWE",
                let id = target?["id"]?.stringValue
            {
                cwe.formUnion(Self.cwes(in: "CWE-" + id.replacingOccurrences(of: "CWE-", with: "")))
            }
        }
        for taxon in result["taxa"]?.arrayValue ?? [] {
            if let id = taxon["id"]?.stringValue, taxon["toolComponent"]?["name"]?.stringValue?.uppercased() == "CWE" {
                cwe.formUnion(Self.cwes(in: "CWE-" + id.replacingOccurrences(of: "CWE-", with: "")))
            }
        }
        // The fingerprint.
        var basis: String
        if let partial = result["partialFingerprints"]?.objectValue,
            case let pairs = partial.compactMap({ key, value in value.stringValue.map { "\(key)=\($0)" } }).sorted(),
            !pairs.isEmpty
        {
            basis = "p\u{0}" + pairs.joined(separator: "\u{0}")
        } else {
            let snippet =
                region?["snippet"]?["text"]?.stringValue ?? location?["contextRegion"]?["snippet"]?["text"]?.stringValue
                ?? sourceLine(path: path, line: line) ?? message ?? ""
            basis = "s\u{0}\(path ?? "")\u{0}" + Self.normalizeSnippet(snippet)
        }
        let key = "\(ruleID)\u{0}\(basis)"
        let occurrence = occurrences[key, default: 0]
        occurrences[key] = occurrence + 1
        if occurrence > 0 { basis += "#\(occurrence)" }
        let digest = SHA256.hash(data: Array("\(scanner)\u{0}\(ruleID)\u{0}\(basis)".utf8))
        let fingerprint = digest.map { String(format: "%02x", $0) }.joined()
        return FindingRecord(
            scanner: scanner, ruleID: String(ruleID.prefix(500)), severity: severity,
            title: String(title.prefix(1000)), message: message.map { String($0.prefix(10000)) },
            path: path.map { String($0.prefix(4096)) }, line: line.map { max($0, 0) },
            column: column.map { max($0, 0) }, cwe: cwe.isEmpty ? nil : cwe.sorted(), fingerprint: fingerprint,
            raw: trimmedRaw(result))
    }

    static func severity(result: JSONValue, rule: JSONValue?) -> Severity {
        for value in [result["properties"]?["security-severity"], rule?["properties"]?["security-severity"]] {
            if let score = value?.doubleValue {
                switch score {
                case 9...: return .critical
                case 7..<9: return .high
                case 4..<7: return .medium
                case 0.1..<4: return .low
                default: return .info
                }
            }
        }
        let level =
            result["level"]?.stringValue ?? rule?["defaultConfiguration"]?["level"]?.stringValue ?? "warning"
        switch level {
        case "error": return .high
        case "warning": return .medium
        case "note": return .low
        default: return .info
        }
    }

    static func cwes(in text: String) -> Set<String> {
        var out = Set<String>()
        let upper = text.uppercased()
        var index = upper.startIndex
        while let range = upper.range(of: "CWE", range: index..<upper.endIndex) {
            var cursor = range.upperBound
            if cursor < upper.endIndex, upper[cursor] == "-" || upper[cursor] == "/" || upper[cursor] == ":" {
                cursor = upper.index(after: cursor)
            }
            var digits = ""
            while cursor < upper.endIndex, upper[cursor].isASCII, upper[cursor].isNumber {
                digits.append(upper[cursor])
                cursor = upper.index(after: cursor)
            }
            if !digits.isEmpty, let number = Int(digits) { out.insert("CWE-\(number)") }
            index = range.upperBound
        }
        return out
    }

    static func normalizeSnippet(_ text: String) -> String {
        text.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }

    /// A URI as the scanner wrote it → a path relative to the root, or nil if it is outside.
    func normalizePath(_ uri: String?) -> String? {
        guard var path = uri, !path.isEmpty else { return nil }
        if path.hasPrefix("file://") {
            path = String(path.dropFirst("file://".count))
            if path.hasPrefix("localhost/") { path = String(path.dropFirst("localhost".count)) }
        }
        path = path.removingPercentEncoding ?? path
        if path.hasPrefix("%SRCROOT%/") { path = String(path.dropFirst("%SRCROOT%/".count)) }
        if path.hasPrefix("/") {
            let realRoot = URL(fileURLWithPath: root).resolvingSymlinksInPath().path
            for prefix in [root, realRoot] where path.hasPrefix(prefix + "/") {
                path = String(path.dropFirst(prefix.count + 1))
                break
            }
            if path.hasPrefix("/") { return path }  // outside the root: keep as the scanner said
        }
        while path.hasPrefix("./") { path = String(path.dropFirst(2)) }
        return path
    }

    private mutating func sourceLine(path: String?, line: Int?) -> String? {
        guard let path, let line, line > 0, !path.hasPrefix("/") else { return nil }
        if sourceLines[path] == nil {
            let full = root + "/" + path
            let attributes = try? FileManager.default.attributesOfItem(atPath: full)
            guard let size = attributes?[.size] as? Int, size < 8 << 20,
                let data = FileManager.default.contents(atPath: full)
            else {
                sourceLines[path] = []
                return nil
            }
            sourceLines[path] = String(decoding: data, as: UTF8.self).split(
                separator: "\n", omittingEmptySubsequences: false)
        }
        guard let lines = sourceLines[path], line <= lines.count else { return nil }
        return String(lines[line - 1])
    }

    private func text(_ message: JSONValue?) -> String? {
        guard let message else { return nil }
        if let text = message["text"]?.stringValue, !text.isEmpty { return text }
        if let markdown = message["markdown"]?.stringValue, !markdown.isEmpty { return markdown }
        return nil
    }

    private func firstSentence(_ text: String) -> String {
        let line = text.split(separator: "\n").first.map(String.init) ?? text
        return String(line.prefix(200))
    }

    private func trimmedRaw(_ result: JSONValue) -> JSONValue {
        guard result.jsonText.utf8.count > maximumRawBytes, case .object(var object) = result else { return result }
        for key in ["codeFlows", "stacks", "graphs", "relatedLocations", "fixes", "attachments"] {
            object.removeValue(forKey: key)
        }
        object["properties"] = .object(["cloudscan-trimmed": .bool(true)])
        let trimmed = JSONValue.object(object)
        if trimmed.jsonText.utf8.count > maximumRawBytes {
            return .object([
                "ruleId": result["ruleId"] ?? .null, "message": result["message"] ?? .null,
                "properties": .object(["cloudscan-trimmed": .bool(true)]),
            ])
        }
        return trimmed
    }
}
