import CloudScanCore
import CloudScanInbound
import Foundation

/// Scanner output, which a crafted repository can shape: SARIF (and the shellcheck and
/// detect-secrets converters) → findings. Whatever comes out must make a findings.batch.v1 that
/// the findings writer accepts: the runner's own batches are never refused.
enum ScannerOutputTargets {
    static func sarif(_ bytes: [UInt8]) {
        guard let first = bytes.first else { return }
        let data = Data(bytes.dropFirst())
        let document: JSONValue?
        switch first % 3 {
        case 0: document = try? JSONDecoder().decode(JSONValue.self, from: data)
        case 1: document = try? SARIFConverters.shellcheck(data)
        default: document = try? SARIFConverters.detectSecrets(data)
        }
        guard let document else { return }
        var normalizer = SARIFNormalizer(scanner: "fuzz", root: "/work/src", ruleIDLastComponent: first & 4 != 0)
        guard let findings = try? normalizer.findings(from: document), !findings.isEmpty else { return }
        for chunk in stride(from: 0, to: findings.count, by: FindingsBatchMessage.maximumFindings) {
            let part = Array(findings[chunk..<min(chunk + FindingsBatchMessage.maximumFindings, findings.count)])
            let batch = FindingsBatchMessage(
                scanID: UUID(), organizationID: UUID(), attempt: 1, batchIndex: chunk, runnerToken: "v1.fuzz",
                findings: part)
            guard let body = try? MessageCoding.encoder().encode(batch) else {
                Property.fail("a normalized finding does not encode")
            }
            // Batches past the size limit are split by the runner before they are sent.
            if body.count > FindingsBatchMessage.maximumBytes && part.count > 1 { continue }
            do {
                let parsed = try FindingsBatchParser.parse(Array(body))
                Property.check(parsed.findings.count == part.count, "findings lost in the batch")
            } catch {
                Property.fail("the writer refuses the runner's own batch: \(error.reason)")
            }
        }
    }
}
