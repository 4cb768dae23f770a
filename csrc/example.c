/*
 * example.c -- the worked example of attnx, in C with no Python:
 * a decoder state q scored against four annotations (the rows of K), the
 * attention weights, and the context vector.
 *
 *   make -C csrc example
 */
#include <stdio.h>

#include "attnx.h"

int main(void)
{
    const double q[3] = {5, 1, 20};
    const double K[4 * 3] = {
        3, 12, 45,
        59, 2, 5,
        1, 43, 5,
        4, 3, 45.3,
    };
    double scores[4], weights[4], ctx[3];

    int rc = attnx_dot_scores(q, K, 4, 3, 1.0, scores);
    if (rc == ATTNX_OK) rc = attnx_attend(q, K, K, 4, 3, 3, 1.0, NULL, ctx, weights);
    if (rc != ATTNX_OK) {
        fprintf(stderr, "attnx: %s\n", attnx_strerror(rc));
        return 1;
    }
    printf("kernels: %s\n", attnx_simd_level());
    printf("scores:  ");
    for (int t = 0; t < 4; t++) printf(" %g", scores[t]);
    printf("\nweights: ");
    for (int t = 0; t < 4; t++) printf(" %.9g", weights[t]);
    printf("\ncontext: ");
    for (int j = 0; j < 3; j++) printf(" %.9g", ctx[j]);
    printf("\n");
    return 0;
}
