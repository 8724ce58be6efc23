import CloudScanCore
import CloudScanPostgres
import Foundation
import Logging

/// `cloudscan cleaner`: each organization's retention (`organizations.retention_days`, 90 by
/// default), applied as the database functions of migration 0008 allow:
/// 1. the coming months' partitions are created ahead;
/// 2. every month that ended before the longest retention of any organization is dropped whole
///    (its scans' artifacts deleted through the storage service first; a month whose artifacts
///    could not all be deleted waits for the next run);
/// 3. the rest is deleted in bounded batches per organization — a few hundred scans, and about
///    ``Configuration/batchFindings`` findings, per transaction — oldest first: artifacts first,
///    then findings, then the scans (an artifact the storage service would not delete keeps its
///    scan for the next run);
/// 4. sent outbox rows older than ``Configuration/outboxKeep`` go.
/// Only finished scans are deleted. One instance works at a time (an advisory lock per run).
public struct RetentionCleaner: Sendable {
    public struct Configuration: Sendable {
        public var batchScans: Int
        public var batchFindings: Int
        public var monthsAhead: Int
        public var outboxKeepDays: Int
        public var lockKey: Int64

        public init(
            batchScans: Int = 500, batchFindings: Int = 50_000, monthsAhead: Int = 3, outboxKeepDays: Int = 7,
            lockKey: Int64 = 0x636C_6F75_6463_6C6E  // "cloudcln"
        ) {
            self.batchScans = batchScans
            self.batchFindings = batchFindings
            self.monthsAhead = monthsAhead
            self.outboxKeepDays = outboxKeepDays
            self.lockKey = lockKey
        }
    }

    /// Deletes an artifact through the storage service; true when it is gone (or never was).
    public typealias ArtifactDeleter = @Sendable (_ reference: String, _ organizationID: UUID) async -> Bool

    /// What a run did (or, dry, would do).
    public struct Report: Sendable {
        public var dryRun = false
        /// False when another instance held the lock (nothing was done).
        public var ran = true
        public var partitionsCreated = 0
        /// Months dropped whole, as `YYYY-MM`, with their scans and findings.
        public var months: [(month: String, scans: Int, findings: Int)] = []
        /// Per organization: scans and findings deleted in batches.
        public var deleted: [UUID: (scans: Int, findings: Int)] = [:]
        public var batches = 0
        public var artifactsDeleted = 0
        public var artifactsKept = 0
        public var outboxPruned = 0

        public var lines: [String] {
            var out: [String] = []
            let verb = dryRun ? "would drop" : "dropped"
            for month in months {
                out.append("\(verb) month \(month.month): \(month.scans) scans, \(month.findings) findings")
            }
            for (organization, counts) in deleted.sorted(by: { $0.key.uuidString < $1.key.uuidString }) {
                out.append(
                    "\(dryRun ? "would delete" : "deleted") for organization \(organization.uuidString.lowercased()): "
                        + "\(counts.scans) scans, \(counts.findings) findings")
            }
            if !dryRun {
                out.append(
                    "batches \(batches), artifacts deleted \(artifactsDeleted), kept \(artifactsKept), partitions created \(partitionsCreated), outbox rows pruned \(outboxPruned)"
                )
            }
            return out
        }
    }

    let client: PostgresClient
    let deleteArtifact: ArtifactDeleter
    let configuration: Configuration
    let logger: Logger

    public init(
        client: PostgresClient, deleteArtifact: @escaping ArtifactDeleter, configuration: Configuration = .init(),
        logger: Logger
    ) {
        self.client = client
        self.deleteArtifact = deleteArtifact
        self.configuration = configuration
        self.logger = logger
    }

    /// One run: everything expired now. `dryRun` reads and reports, changing nothing.
    public func run(dryRun: Bool = false) async throws -> Report {
        try await client.withConnection { session in
            let key = configuration.lockKey
            guard try await session.query("SELECT pg_try_advisory_lock(\(key))").single().decode(Bool.self, at: 0)
            else {
                logger.notice("cleaner: another instance is running; skipped")
                var report = Report()
                report.ran = false
                return report
            }
            do {
                let report = try await work(dryRun: dryRun)
                _ = try? await session.query("SELECT pg_advisory_unlock(\(key))")
                return report
            } catch {
                _ = try? await session.query("SELECT pg_advisory_unlock(\(key))")
                throw error
            }
        }
    }

    private func work(dryRun: Bool) async throws -> Report {
        var report = Report()
        report.dryRun = dryRun
        if !dryRun {
            report.partitionsCreated = try await client.query(
                "SELECT retention_ensure_partitions(\(Int32(configuration.monthsAhead)))"
            ).single().decode(Int.self, at: 0)
        }
        let policies = try await client.query(
            "SELECT organization_id, retention_days, cutoff FROM retention_policies()"
        )
        .map { (try $0.decode(UUID.self, at: 0), try $0.decode(Int.self, at: 1), try $0.decode(Date.self, at: 2)) }
        // 1. Whole months before the longest retention (90 days when there is no organization).
        let longest = policies.map(\.1).max() ?? 90
        let months = try await client.query(
            """
            SELECT to_char(month, 'YYYY-MM-DD'), scans, findings
            FROM retention_months_before(now() - make_interval(days => \(Int32(longest))))
            """
        ).map { (try $0.decode(String.self, at: 0), try $0.decode(Int.self, at: 1), try $0.decode(Int.self, at: 2)) }
        for (month, scans, findings) in months {
            let label = String(month.prefix(7))
            if dryRun {
                report.months.append((label, scans, findings))
                continue
            }
            let artifacts = try await client.query(
                "SELECT organization_id, artifact_ref FROM retention_month_artifacts(\(month)::date)"
            ).map { (try $0.decode(UUID.self, at: 0), try $0.decode(String.self, at: 1)) }
            var kept = 0
            for (organization, reference) in artifacts where Self.isStored(reference) {
                if await deleteArtifact(reference, organization) { report.artifactsDeleted += 1 } else { kept += 1 }
            }
            guard kept == 0 else {
                report.artifactsKept += kept
                logger.warning(
                    "cleaner: a month's artifacts could not all be deleted; the month waits for the next run",
                    metadata: ["month": "\(label)", "kept": "\(kept)"])
                continue
            }
            let dropped = try await client.query("SELECT retention_drop_month(\(month)::date)").single()
                .decode(Int.self, at: 0)
            report.months.append((label, scans, findings))
            logger.notice(
                "cleaner: month dropped",
                metadata: [
                    "month": "\(label)", "partitions": "\(dropped)", "scans": "\(scans)", "findings": "\(findings)",
                ])
        }
        // 2. The rest, per organization, in bounded batches, oldest first (a keyset walk, so a
        //    scan whose artifact was kept does not block the ones after it). A dry run counts what
        //    the batches would take, past the months it would drop.
        let droppedThrough = months.last.map { "\($0.0)" }
        for (organization, _, cutoff) in policies {
            var total = (scans: 0, findings: 0)
            if dryRun {
                let counted = try await client.query(
                    """
                    SELECT count(*), coalesce(sum(findings), 0)::bigint
                    FROM retention_expired_scans(\(organization), \(cutoff), '-infinity',
                                                 '00000000-0000-0000-0000-000000000000', 2147483647,
                                                 9223372036854775807)
                    WHERE \(droppedThrough)::date IS NULL
                       OR created_at >= (\(droppedThrough)::date + interval '1 month')::timestamp AT TIME ZONE 'UTC'
                    """
                ).single()
                total = (try counted.decode(Int.self, at: 0), try counted.decode(Int.self, at: 1))
                if total.scans > 0 { report.deleted[organization] = total }
                continue
            }
            var after = (
                createdAt: Date(timeIntervalSince1970: 0), id: UUID(uuidString: "00000000-0000-0000-0000-000000000000")!
            )
            while true {
                let batch = try await client.query(
                    """
                    SELECT id, created_at, artifact_ref, findings
                    FROM retention_expired_scans(\(organization), \(cutoff), \(after.createdAt), \(after.id),
                                                 \(Int32(configuration.batchScans)), \(Int64(configuration.batchFindings)))
                    """
                ).map {
                    (
                        id: try $0.decode(UUID.self, at: 0), createdAt: try $0.decode(Date.self, at: 1),
                        artifact: try $0.decode(String.self, at: 2), findings: try $0.decode(Int.self, at: 3)
                    )
                }
                guard let last = batch.last else { break }
                after = (last.createdAt, last.id)
                var doomed: [(UUID, Date)] = []
                for scan in batch {
                    if Self.isStored(scan.artifact) {
                        guard await deleteArtifact(scan.artifact, organization) else {
                            report.artifactsKept += 1
                            logger.warning(
                                "cleaner: the storage service kept an artifact; its scan waits for the next run",
                                metadata: ["scan_id": "\(scan.id.uuidString.lowercased())"])
                            continue
                        }
                        report.artifactsDeleted += 1
                    }
                    doomed.append((scan.id, scan.createdAt))
                }
                if doomed.isEmpty { continue }
                let result = try await client.query(
                    """
                    SELECT scans, findings FROM retention_delete_scans(\(organization), \(cutoff),
                        \(doomed.map { $0.0.uuidString })::uuid[],
                        \(doomed.map { RFC3339.string(from: $0.1, fractionDigits: 6) })::timestamptz[])
                    """
                ).single()
                total.scans += try result.decode(Int.self, at: 0)
                total.findings += try result.decode(Int.self, at: 1)
                report.batches += 1
            }
            if total.scans > 0 { report.deleted[organization] = total }
        }
        if !dryRun {
            report.outboxPruned = try await client.query(
                "SELECT retention_prune_outbox(make_interval(days => \(Int32(configuration.outboxKeepDays))))"
            ).single().decode(Int.self, at: 0)
        }
        logger.notice("cleaner run", metadata: ["report": "\(report.lines.joined(separator: "; "))"])
        return report
    }

    /// References the storage service keeps (others — https, file — are not ours to delete).
    static func isStored(_ reference: String) -> Bool { reference.hasPrefix("s3://") }
}
