import CloudScanAMQP
import CloudScanCore
import Logging

extension AMQPConsumerService {
    /// A fleet work queue's consumer as every role runs it: prefetch twice the concurrency,
    /// dead letters to `cloudscan.dlx` under the queue's name, delays through the queue's tiers
    /// from the topology file.
    static func workQueue(
        _ queue: String, broker: AMQPConfiguration, publisher: AMQPPublisher, topology: AMQPTopology,
        concurrency: Int, connectionName: String? = nil, logger: Logger, handler: @escaping Handler
    ) -> AMQPConsumerService {
        let delays = topology.workQueues.first { $0.name == queue }?.retryDelaysSeconds ?? [5, 30, 300]
        var consumer = AMQPConsumer.Configuration(broker: broker, queue: queue, prefetch: concurrency * 2)
        if let connectionName { consumer.connectionName = connectionName }
        return AMQPConsumerService(
            consumer: AMQPConsumer(configuration: consumer, logger: logger),
            configuration: .init(
                concurrency: concurrency,
                deadLetter: .init(publisher: publisher, exchange: Exchanges.deadLetter, routingKey: queue),
                delay: .init(publisher: publisher, queue: queue, delaysSeconds: delays)),
            logger: logger, handler: handler)
    }
}
