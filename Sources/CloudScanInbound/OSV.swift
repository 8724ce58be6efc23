import CloudScanCore
import Foundation

/// Software composition analysis offline: a CycloneDX SBOM (syft) matched against a directory of
/// OSV-format advisories. No advisory directory means no verdict — the scanner is reported as
/// skipped with "advisory database unavailable", never as clean.
package struct OSVDatabase {
    struct Advisory {
        var id: String
        var aliases: [String]
        var summary: String
        var severity: Severity?
        var cwe: [String]
        var affected: [JSONValue]
    }

    /// Advisories by "<ecosystem>/<lowercased name>".
    private(set) var byPackage: [String: [Advisory]] = [:]
    private(set) var count = 0

    package init(directory: String) throws {
        let enumerator = FileManager.default.enumerator(atPath: directory)
        while let relative = enumerator?.nextObject() as? String {
            guard relative.hasSuffix(".json") else { continue }
            guard let data = FileManager.default.contents(atPath: directory + "/" + relative),
                let record = try? JSONDecoder().decode(JSONValue.self, from: data), let id = record["id"]?.stringValue
            else { continue }
            let databaseSeverity = record["database_specific"]?["severity"]?.stringValue?.uppercased()
            let severity: Severity? =
                switch databaseSeverity {
                case "CRITICAL": .critical
                case "HIGH": .high
                case "MODERATE", "MEDIUM": .medium
                case "LOW": .low
                default: nil
                }
            var cwe: [String] = []
            for value in record["database_specific"]?["cwe_ids"]?.arrayValue ?? [] {
                if let text = value.stringValue { cwe.append(contentsOf: SARIFNormalizer.cwes(in: text)) }
            }
            let advisory = Advisory(
                id: id, aliases: (record["aliases"]?.arrayValue ?? []).compactMap(\.stringValue),
                summary: record["summary"]?.stringValue ?? record["details"]?.stringValue.map { String($0.prefix(200)) }
                    ?? id, severity: severity, cwe: cwe.sorted(), affected: record["affected"]?.arrayValue ?? [])
            count += 1
            for affected in advisory.affected {
                guard let ecosystem = affected["package"]?["ecosystem"]?.stringValue,
                    let name = affected["package"]?["name"]?.stringValue
                else { continue }
                byPackage[Self.key(ecosystem, name), default: []].append(advisory)
            }
        }
    }

    static func key(_ ecosystem: String, _ name: String) -> String {
        "\(ecosystem.lowercased())/\(name.lowercased().replacingOccurrences(of: "_", with: "-"))"
    }

    /// purl type → OSV ecosystem.
    static let ecosystems: [String: String] = [
        "pypi": "PyPI", "npm": "npm", "golang": "Go", "maven": "Maven", "gem": "RubyGems", "cargo": "crates.io",
        "nuget": "NuGet", "composer": "Packagist", "hex": "Hex", "pub": "Pub", "swift": "SwiftURL",
    ]

    /// The SBOM's components that an advisory affects → SARIF.
    package func match(sbom: JSONValue) -> JSONValue {
        var rules: [String: JSONValue] = [:]
        var results: [JSONValue] = []
        for component in sbom["components"]?.arrayValue ?? [] {
            guard let purl = component["purl"]?.stringValue, let version = component["version"]?.stringValue,
                let parsed = Self.parsePURL(purl), let ecosystem = Self.ecosystems[parsed.type]
            else { continue }
            let name = component["name"]?.stringValue ?? parsed.name
            var location: String?
            for property in component["properties"]?.arrayValue ?? [] {
                if property["name"]?.stringValue == "syft:location:0:path" { location = property["value"]?.stringValue }
            }
            for advisory in byPackage[Self.key(ecosystem, name)] ?? [] {
                guard let fixed = Self.affects(advisory, ecosystem: ecosystem, name: name, version: version) else {
                    continue
                }
                let level: String
                let score: String?
                switch advisory.severity {
                case .critical: (level, score) = ("error", "9.5")
                case .high: (level, score) = ("error", "8.0")
                case .medium: (level, score) = ("warning", "5.5")
                case .low: (level, score) = ("note", "3.0")
                default: (level, score) = ("warning", nil)
                }
                let cve = advisory.aliases.first { $0.hasPrefix("CVE-") }
                rules[advisory.id] = SARIFConverters.rule(
                    id: advisory.id, description: advisory.summary, level: level,
                    tags: ["security", "vulnerability"] + advisory.cwe, securitySeverity: score,
                    helpURI: "https://osv.dev/vulnerability/\(advisory.id)")
                var message = "\(name) \(version) is affected by \(advisory.id)"
                if let cve { message += " (\(cve))" }
                message += ": \(advisory.summary)"
                if let fixed { message += "; fixed in \(fixed)" }
                let path = location.map { $0.hasPrefix("/") ? String($0.dropFirst()) : $0 }
                results.append(
                    SARIFConverters.result(
                        ruleID: advisory.id, level: level, message: message, path: path, line: nil, column: nil,
                        partialFingerprints: ["package/v1": "\(parsed.type)/\(name.lowercased())@\(version)"],
                        properties: score.map { ["security-severity": .string($0)] }))
            }
        }
        return SARIFConverters.document(
            tool: "cloudscan-osv", informationURI: "https://ossf.github.io/osv-schema/",
            rules: rules.keys.sorted().map { rules[$0]! }, results: results)
    }

    /// Whether the advisory affects this version; returns the fixed version when known ("" if none).
    static func affects(_ advisory: Advisory, ecosystem: String, name: String, version: String) -> String?? {
        for affected in advisory.affected {
            guard affected["package"]?["ecosystem"]?.stringValue?.lowercased() == ecosystem.lowercased(),
                key(ecosystem, affected["package"]?["name"]?.stringValue ?? "") == key(ecosystem, name)
            else { continue }
            if (affected["versions"]?.arrayValue ?? []).contains(where: { $0.stringValue == version }) {
                return .some(nil)
            }
            for range in affected["ranges"]?.arrayValue ?? [] {
                guard let type = range["type"]?.stringValue, type == "ECOSYSTEM" || type == "SEMVER" else { continue }
                var introduced: String?
                var inside = false
                var fixedVersion: String?
                for event in range["events"]?.arrayValue ?? [] {
                    if let value = event["introduced"]?.stringValue {
                        introduced = value
                        inside = value == "0" || compareVersions(version, value) >= 0
                    } else if let value = event["fixed"]?.stringValue {
                        if inside && introduced != nil && compareVersions(version, value) < 0 { return .some(value) }
                        inside = false
                        fixedVersion = value
                    } else if let value = event["last_affected"]?.stringValue {
                        if inside && introduced != nil && compareVersions(version, value) <= 0 { return .some(nil) }
                        inside = false
                    }
                }
                if inside && introduced != nil { return .some(nil) }
            }
        }
        return nil
    }

    /// Dotted versions compared part by part, numbers as numbers ("2.19.0" < "2.20.0").
    static func compareVersions(_ a: String, _ b: String) -> Int {
        let left = a.split(whereSeparator: { ".-+_".contains($0) })
        let right = b.split(whereSeparator: { ".-+_".contains($0) })
        for index in 0..<max(left.count, right.count) {
            let l = index < left.count ? String(left[index]) : "0"
            let r = index < right.count ? String(right[index]) : "0"
            if let ln = Int(l), let rn = Int(r) {
                if ln != rn { return ln < rn ? -1 : 1 }
            } else if l != r {
                return l < r ? -1 : 1
            }
        }
        return 0
    }

    static func parsePURL(_ purl: String) -> (type: String, name: String)? {
        guard purl.hasPrefix("pkg:") else { return nil }
        let body = purl.dropFirst(4).split(separator: "@").first.map(String.init) ?? ""
        let parts = body.split(separator: "/")
        guard parts.count >= 2 else { return nil }
        let name = parts.dropFirst().joined(separator: "/").removingPercentEncoding ?? ""
        return (String(parts[0]).lowercased(), name)
    }
}
