/* Planted issues for flawfinder and cppcheck. */
#include <stdio.h>
#include <string.h>

void copy_name(const char *input) {
    char name[16];
    strcpy(name, input);
    printf(name);
}

int sum_first(void) {
    int values[4] = {1, 2, 3, 4};
    int total = 0;
    for (int i = 0; i <= 4; i++) {
        total += values[i];
    }
    return total;
}
