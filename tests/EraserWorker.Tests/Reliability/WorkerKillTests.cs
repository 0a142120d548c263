using EraserWorker.Contracts;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Worker;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Reliability;

/// <summary>
/// The worker process SIGKILLed (<see cref="WorkerProcess.KillAsync"/>: Process.Kill, i.e. kill -9 of the process tree)
/// while requests flow through the real RabbitMQ and Azurite — every other kill at a random moment, the others in the
/// middle of a version write (as soon as the version's claim appears in the store) — and restarted each time. Unacknowledged
/// messages are redelivered to the new process; a version the dead process left half-written is never published (its
/// claim blocks that number, so the new process writes under the next free one), a version it completed but did not
/// publish is moved to the head by the next writer. Checked: every request completes, none is applied twice, the
/// history is one linear chain, and every version equals exact retraining on its cumulative removals.
/// CI: 60 requests, 3 kills (<see cref="FaultSettings"/>); scripts/fault-injection.sh: 200 requests, 10 kills.
/// </summary>
public sealed class WorkerKillTests(ITestOutputHelper output)
{
    [ServiceFact]
    public async Task Worker_killed_at_random_moments_loses_nothing_applies_nothing_twice_and_equals_retraining()
    {
        var settings = FaultSettings.FromEnvironment(requests: 60, kills: 3);
        await using var bed = await WorkerTestBed.CreateAsync(output);
        bed.Log($"fault settings: {settings}");
        var random = new Random(settings.Seed);
        var ridge = new RidgeOracle(samples: settings.Requests + 10, seed: 31);
        await bed.RegisterAsync(ridge);
        // A killed writer's claim blocks its version number; the next process waits ClaimWait for it before writing
        // under the next free number. 3 s instead of the default 20 s keeps the run short; the mechanism is the same.
        var extra = new Dictionary<string, string> { ["Eraser__Worker__ClaimWait"] = "00:00:03" };
        var worker = await bed.StartWorkerAsync("worker-0", extra: extra);
        var broker = await bed.ConnectBrokerAsync();

        // One sample per request; every 9th request also names its predecessor's sample again (removing an
        // already-removed sample is a no-op, SPEC §1).
        var requests = Enumerable.Range(0, settings.Requests)
            .Select(i => new UnlearningRequested($"kill-{i:D3}", WorkerTestBed.AdapterId, UnlearningTasks.Remove,
                i % 9 == 8 ? [ridge.Ids[i], ridge.Ids[i - 1]] : [ridge.Ids[i]]))
            .ToList();

        // Requests keep flowing during the whole kill phase: a restart takes a few seconds.
        var interval = TimeSpan.FromMilliseconds(Math.Clamp(settings.Kills * 4000.0 / settings.Requests, 20, 300));
        var publishing = Task.Run(async () =>
        {
            foreach (var request in requests)
            {
                await broker.PublishAsync(request);
                await Task.Delay(interval);
            }
        });

        var kills = new List<string>();
        string claims = BlobLayout.Adapter(WorkerTestBed.AdapterId) + "claims/";
        for (int k = 1; k <= settings.Kills; k++)
        {
            // Odd kills at a random moment; even kills in the middle of a version write: as soon as a claim (taken before
            // the first file is uploaded, released after the manifest) appears in the store.
            bool midWrite = k % 2 == 0;
            var since = System.Diagnostics.Stopwatch.StartNew();
            string? claim = null;
            if (midWrite)
            {
                var existing = await ListAsync(bed, claims);
                while (since.Elapsed < TimeSpan.FromSeconds(15) && claim is null)
                    claim = (await ListAsync(bed, claims)).Except(existing).FirstOrDefault();
            }
            else
            {
                await Task.Delay(TimeSpan.FromMilliseconds(random.Next(200, 3000)));
            }
            string lastLine = worker.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "(no output)";
            await worker.KillAsync();
            Assert.True(worker.HasExited, $"{worker.Name} survived the kill");
            kills.Add($"kill {k} ({(midWrite ? claim is null ? "mid-write wanted, no claim seen in 15 s" : $"mid-write, {claim[claims.Length..]} held" : "random")}): " +
                      $"{worker.Name} after {since.Elapsed.TotalSeconds:F1} s, {broker.Completed.Select(c => c.RequestId).Distinct().Count()} completed so far; " +
                      $"last line: {lastLine.Trim()}");
            bed.Log(kills[^1]);
            worker = await bed.StartWorkerAsync($"worker-{k}", extra: extra);
        }
        await publishing;
        bed.Log($"all {requests.Count} requests published");

        var ids = requests.Select(r => r.RequestId).ToList();
        await broker.WaitCompletedAsync(ids, TimeSpan.FromSeconds(120 + settings.Requests), bed.Diagnostics);
        await broker.CollectForAsync(TimeSpan.FromSeconds(1.5));
        Assert.True(broker.Failed.Count == 0, "failures: " + string.Join("; ", broker.Failed.Select(f => $"{f.RequestId} {f.Code}: {f.Message}")));
        Assert.False(worker.HasExited, worker.Tail());

        var audit = await ChainAudit.LoadAsync(bed.Store, WorkerTestBed.AdapterId);
        bed.Log($"{audit.Describe()}; completions received {broker.Completed.Count} for {ids.Count} requests");
        audit.AssertExactlyOnce(ids, broker.Completed);
        var union = requests.SelectMany(r => r.SampleIds).Distinct().Order(StringComparer.Ordinal).ToList();
        Assert.Equal(union, audit.HeadRemoved().Order(StringComparer.Ordinal));
        // Announced versions are published versions (on the chain), never orphans.
        Assert.All(broker.Published, p => Assert.Contains(p.Version, audit.Chain));
        // ... and every version of the chain is announced at least once: a process killed between moving the head and
        // publishing leaves its requests unacknowledged, and their redelivery announces the version again.
        var unannounced = audit.Chain.Skip(1).Where(v => broker.Published.All(p => p.Version != v)).ToList();
        int reannounced = broker.Published.GroupBy(p => p.Version).Sum(g => g.Count() - 1);
        bed.Log($"AdapterVersionPublished: {broker.Published.Count} events for {audit.Chain.Count - 1} chain versions ({reannounced} repeated on redelivery)");
        Assert.True(unannounced.Count == 0, $"chain versions never announced: [{string.Join(",", unannounced)}] ({audit.Describe()})");
        foreach (var p in broker.Published)
        {
            var applied = WorkerTestBed.AppliedRequestIds(audit.Manifests[p.Version]);
            Assert.True(applied.Order(StringComparer.Ordinal).SequenceEqual(p.RequestIds.Order(StringComparer.Ordinal)),
                $"the announcement of version {p.Version} lists [{string.Join(",", p.RequestIds)}], its manifest [{string.Join(",", applied)}]");
        }

        // The final adapter equals the fault-free result, exact retraining on the union of removals; so does every
        // version on the way (each from its own cumulative edit set).
        string head = await bed.DownloadAsync(audit.Head);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(head), ridge.Retrain(union), $"head version {audit.Head}");
        await audit.AssertEveryVersionEqualsRetrainingAsync(bed, ridge, WorkerTestBed.AdapterId);
        output.WriteLine(string.Join('\n', kills));
    }

    private static async Task<List<string>> ListAsync(WorkerTestBed bed, string prefix)
    {
        var names = new List<string>();
        await foreach (var name in bed.Store.Blobs.ListAsync(prefix))
            names.Add(name);
        return names;
    }
}
