using EraserWorker.Benchmarks;

return await WorkerBenchmark.RunAsync(args);
