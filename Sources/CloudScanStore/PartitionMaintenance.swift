import CloudScanPostgres
import Foundation

/// Creates the monthly partitions of the partitioned tables ahead of time.
public struct PartitionMaintenance: Sendable {
    let client: PostgresClient

    /// Maintenance over a client whose role owns the schema.
    public init(client: PostgresClient) { self.client = client }

    /// Ensures partitions from last month to `monthsAhead` months ahead; returns how many were created.
    @discardableResult
    public func ensureAhead(monthsAhead: Int = 3) async throws -> Int {
        try await client.query("SELECT ensure_month_partitions(now() - interval '1 month', \(Int32(monthsAhead + 2)))")
            .single().decode(Int.self, at: 0)
    }
}
