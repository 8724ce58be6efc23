import CloudScanCore
import Foundation

/// Scanners that write something other than SARIF, converted to SARIF 2.1.0 so one normalizer
/// reads every scanner.
package enum SARIFConverters {
    static let schema = "https://json.schemastore.org/sarif-2.1.0.json"

    static func document(tool: String, informationURI: String?, rules: [JSONValue], results: [JSONValue]) -> JSONValue {
        var driver: [String: JSONValue] = ["name": .string(tool), "rules": .array(rules)]
        if let informationURI { driver["informationUri"] = .string(informationURI) }
        return .object([
            "$schema": .string(schema), "version": .string("2.1.0"),
            "runs": .array([.object(["tool": .object(["driver": .object(driver)]), "results": .array(results)])]),
        ])
    }

    static func result(
        ruleID: String, level: String, message: String, path: String?, line: Int?, column: Int?,
        endLine: Int? = nil, endColumn: Int? = nil, partialFingerprints: [String: String]? = nil,
        properties: [String: JSONValue]? = nil
    ) -> JSONValue {
        var object: [String: JSONValue] = [
            "ruleId": .string(ruleID), "level": .string(level), "message": .object(["text": .string(message)]),
        ]
        if let path {
            var region: [String: JSONValue] = [:]
            if let line, line > 0 { region["startLine"] = .int(line) }
            if let column, column > 0 { region["startColumn"] = .int(column) }
            if let endLine, endLine > 0 { region["endLine"] = .int(endLine) }
            if let endColumn, endColumn > 0 { region["endColumn"] = .int(endColumn) }
            var physical: [String: JSONValue] = ["artifactLocation": .object(["uri": .string(path)])]
            if !region.isEmpty { physical["region"] = .object(region) }
            object["locations"] = .array([.object(["physicalLocation": .object(physical)])])
        }
        if let partialFingerprints, !partialFingerprints.isEmpty {
            object["partialFingerprints"] = .object(partialFingerprints.mapValues { .string($0) })
        }
        if let properties { object["properties"] = .object(properties) }
        return .object(object)
    }

    static func rule(
        id: String, name: String? = nil, description: String, level: String, tags: [String] = [],
        securitySeverity: String? = nil, helpURI: String? = nil
    ) -> JSONValue {
        var properties: [String: JSONValue] = [:]
        if !tags.isEmpty { properties["tags"] = .array(tags.map { .string($0) }) }
        if let securitySeverity { properties["security-severity"] = .string(securitySeverity) }
        var object: [String: JSONValue] = [
            "id": .string(id), "shortDescription": .object(["text": .string(description)]),
            "defaultConfiguration": .object(["level": .string(level)]),
        ]
        if let name { object["name"] = .string(name) }
        if let helpURI { object["helpUri"] = .string(helpURI) }
        if !properties.isEmpty { object["properties"] = .object(properties) }
        return .object(object)
    }

    // MARK: shellcheck -f json1

    package static func shellcheck(_ data: Data) throws -> JSONValue {
        let input = try JSONDecoder().decode(JSONValue.self, from: data)
        var rules: [String: JSONValue] = [:]
        var results: [JSONValue] = []
        for comment in input["comments"]?.arrayValue ?? [] {
            guard let code = comment["code"]?.intValue else { continue }
            let id = "SC\(code)"
            let level: String
            switch comment["level"]?.stringValue {
            case "error": level = "error"
            case "warning": level = "warning"
            case "info": level = "note"
            default: level = "none"  // style
            }
            let message = comment["message"]?.stringValue ?? id
            rules[id] =
                rules[id]
                ?? rule(
                    id: id, description: message, level: level,
                    helpURI: "https://www.shellcheck.net/wiki/\(id)")
            results.append(
                result(
                    ruleID: id, level: level, message: message, path: comment["file"]?.stringValue,
                    line: comment["line"]?.intValue, column: comment["column"]?.intValue,
                    endLine: comment["endLine"]?.intValue, endColumn: comment["endColumn"]?.intValue))
        }
        return document(
            tool: "shellcheck", informationURI: "https://www.shellcheck.net",
            rules: rules.keys.sorted().map { rules[$0]! }, results: results)
    }

    // MARK: detect-secrets scan

    package static func detectSecrets(_ data: Data) throws -> JSONValue {
        let input = try JSONDecoder().decode(JSONValue.self, from: data)
        var rules: [String: JSONValue] = [:]
        var results: [JSONValue] = []
        for (file, secrets) in (input["results"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            for secret in secrets.arrayValue ?? [] {
                let type = secret["type"]?.stringValue ?? "Secret"
                let id =
                    "detect-secrets."
                    + type.lowercased().split(whereSeparator: { !$0.isLetter && !$0.isNumber }).joined(separator: "-")
                rules[id] =
                    rules[id]
                    ?? rule(
                        id: id, name: type, description: "\(type) found in the source", level: "error",
                        tags: ["security", "CWE-798"], securitySeverity: "7.5")
                let hashed = secret["hashed_secret"]?.stringValue ?? ""
                results.append(
                    result(
                        ruleID: id, level: "error", message: "\(type): a secret is committed in \(file)", path: file,
                        line: secret["line_number"]?.intValue, column: nil,
                        // The secret's hash: the same secret moved to another line is the same finding.
                        partialFingerprints: hashed.isEmpty ? nil : ["hashedSecret/v1": hashed]))
            }
        }
        return document(
            tool: "detect-secrets", informationURI: "https://github.com/Yelp/detect-secrets",
            rules: rules.keys.sorted().map { rules[$0]! }, results: results)
    }
}
