using EraserWorker.Contracts;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Worker;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Reliability;

/// <summary>
/// Two and three worker processes competing for one queue and racing on one adapter's head (SPEC §4: the head's ETag
/// makes concurrent updates safe; on conflict, reload and recompute). On the folder store, whose create-only writes are
/// strictly arbitrated across processes, and on Azurite. Checked: no lost update (every request applied, by exactly one
/// version of the chain), a linear version chain, the final adapter equals retraining.
/// </summary>
public sealed class ReplicaRaceTests(ITestOutputHelper output)
{
    private const int Requests = 36;

    [ServiceTheory]
    [InlineData(2, "FileSystem")]
    [InlineData(3, "FileSystem")]
    [InlineData(3, "AzureBlob")]
    public async Task Replicas_racing_on_one_adapter_lose_no_update_and_keep_a_linear_chain(int replicas, string storage)
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(samples: Requests + 4, seed: 50 + replicas);
        AdapterStore store = bed.Store;
        Dictionary<string, string>? extra = null;
        if (storage == "FileSystem")
        {
            string root = bed.Temp.Sub("shared-store");
            store = new AdapterStore(new FileSystemBlobStore(root), new StorageOptions { WriterId = "tests" });
            extra = new() { ["Eraser__Storage__Kind"] = "FileSystem", ["Eraser__Storage__Root"] = root };
            var (adapter, cache) = ridge.WriteFiles(bed.Temp.Sub("source"));
            await store.RegisterAsync(WorkerTestBed.AdapterId, adapter, cache);
        }
        else
        {
            await bed.RegisterAsync(ridge);
        }
        await Task.WhenAll(Enumerable.Range(1, replicas).Select(i => bed.StartWorkerAsync($"replica-{i}", extra: extra)));
        var broker = await bed.ConnectBrokerAsync();

        var requests = Enumerable.Range(0, Requests)
            .Select(i => new UnlearningRequested($"race-{replicas}-{i:D2}", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[i]]))
            .ToList();
        // Small bursts, so that every replica keeps forming batches of the same adapter while the others publish.
        foreach (var burst in requests.Chunk(replicas))
        {
            await Task.WhenAll(burst.Select(broker.PublishAsync));
            await Task.Delay(100);
        }
        var ids = requests.Select(r => r.RequestId).ToList();
        await broker.WaitCompletedAsync(ids, TimeSpan.FromSeconds(180), bed.Diagnostics);
        await broker.CollectForAsync(TimeSpan.FromSeconds(1));
        Assert.True(broker.Failed.Count == 0, "failures: " + string.Join("; ", broker.Failed.Select(f => $"{f.RequestId} {f.Code}: {f.Message}")));

        var audit = await ChainAudit.LoadAsync(store, WorkerTestBed.AdapterId);
        int conflicts = bed.Workers.Sum(w => Count(w.Output, "moved under us"));
        bed.Log($"{replicas} replicas on {storage}: {audit.Describe()}; head conflicts logged: {conflicts}; " +
                $"versions by replica: {string.Join(", ", bed.Workers.Select(w => $"{w.Name} {Count(w.Output, "Published tenant-a/support-bot version")}"))}");
        audit.AssertExactlyOnce(ids, broker.Completed);
        Assert.Empty(audit.Claims);
        // Every announced version is on the chain, each exactly once.
        Assert.Equal(audit.Chain.Skip(1), broker.Published.Select(p => p.Version).Order());
        // Every replica took part.
        foreach (var worker in bed.Workers)
            Assert.True(worker.Output.Contains("completed in version", StringComparison.Ordinal), $"{worker.Name} completed nothing.\n{worker.Tail()}");

        string dir = Path.Combine(bed.Temp.Path, "head");
        await store.DownloadVersionAsync(WorkerTestBed.AdapterId, audit.Head, dir);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), ridge.Retrain(requests.SelectMany(r => r.SampleIds)), $"head version {audit.Head}");
    }

    private static int Count(string text, string what)
    {
        int count = 0;
        for (int i = text.IndexOf(what, StringComparison.Ordinal); i >= 0; i = text.IndexOf(what, i + what.Length, StringComparison.Ordinal))
            count++;
        return count;
    }
}
